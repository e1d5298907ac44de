#!/usr/bin/env bash
# Build .devkit/: the Python wheels that the GPU host lacks, for running this
# project there without a package index.
#
# What it does
#   1. Runs ../shared/devkit/make-device-kit .devkit-cache with EXTRA set to
#      what the project needs beyond it: av (PyAV, H.264 mp4 encoding), ftfy +
#      wcwidth (Wan prompt cleaning), nvidia-ml-py, the openai SDK and its deps,
#      nvidia-cudnn-frontend (FP8 attention of the GPU profiles' fast path). That script fetches Ray
#      Serve's and diffusers' dependencies and repacks the Ray wheel without its
#      jars. .devkit-cache/ (git-ignored, ~95 MB, never carried) keeps those
#      wheels as downloaded, so a re-run downloads nothing new.
#   2. Repacks each cached wheel into .devkit/ (skipped where .devkit/ already
#      holds the repack of that very file, so re-running is quick and gives a
#      byte-identical kit; wheels no longer in the cache are removed):
#        - ZIP_LZMA instead of deflate (~30% smaller on the native code);
#        - strips the symbol tables / debug info from ELF files that still have
#          them (Ray's gcs_server, raylet, _raylet.so; PyAV's Cython modules);
#        - Ray only: drops rllib, tune, train, data, llm (Serve imports none of
#          them; the dashboard imports train/data lazily, per request) and the
#          dashboard's web UI assets (index.html and an empty static/ stay, so
#          the dashboard process still starts and its HTTP API still answers);
#        - nvidia-cudnn-frontend only (FP8 attention, speed.fp8_attention): drops
#          its standalone kernel families (gemm, linear_attention, ...: CUDNN_DROP),
#          which an SDPA graph never imports, and comes without its declared
#          CuTe DSL dependencies (its python engines; the FP8 SDPA runs on
#          cuDNN's own engines);
#        - gives every ELF file mode 0755 again. make-device-kit's repack loses
#          it, and then ray.init fails with "Permission denied: .../gcs_server";
#        - rewrites RECORD so it matches the files (hashes, sizes).
#   3. Prints each wheel's size and the total, and fails above 62 MiB.
#
# Why: a device call carries at most 64 MiB of working tree. With deflate, Ray
# (~42 MB after make-device-kit) + PyAV (~36 MB) + the rest (~12 MB) is ~90 MB.
#
# Use, here in the project root (or from anywhere; it cd's there):
#   bash bench/make_device_kit.sh            # FRESH=1 to rebuild from scratch
# then, on the GPU host (name .devkit in the run's carry), start the command with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devkit/*.whl \
#     && python3 -m compileall -q -j 0 /tmp/site >/dev/null; export PYTHONPATH=/tmp/site:$PWD
# compileall (2 s on 16 cores) matters: the GPU image sets PYTHONDONTWRITEBYTECODE=1,
# so without it every process (Ray's, each replica's) compiled the kit's sources again:
# `ray start` 14.8 s vs 9.3 s, `from ray import serve` 4.5-5.8 s vs 2.6-3.0 s.
#
# Caveats: pip unpacks LZMA zip members through Python's zipfile, which needs
# the lzma module (standard in CPython builds; the host's Python 3.12 has it
# unless built without liblzma). Ray's native crash stack traces lose function
# names (symbols stripped). ray.data/train/tune/rllib/llm are not importable
# from this kit, and the dashboard's web page is blank (its JSON API works).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self=$here/$(basename "${BASH_SOURCE[0]}")
root=$(dirname "$here")
cd "$root"
kit=.devkit
cache=${DEVKIT_CACHE:-.devkit-cache}
maker=${MAKE_DEVICE_KIT:-$root/../shared/devkit/make-device-kit}
limit_mib=${LIMIT_MIB:-62}
AV_VERSION=${AV_VERSION:-18.1.0}   # same as the dev venv; pyproject wants av>=14
command -v strip >/dev/null || { echo "needs binutils' strip" >&2; exit 1; }

[ "${FRESH:-0}" = 1 ] && rm -rf "$kit" "$cache"
mkdir -p "$kit"
grep -qx "/$kit/" .git/info/exclude 2>/dev/null || echo "/$kit/" >> .git/info/exclude
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# python-multipart: the gateway parses form bodies (the openai SDK sends creates as
# multipart); without it every SDK create was a 500.
# openai and what it needs beyond the image (distro, jiter, sniffio, httpx2, httpcore2,
# truststore): bench/gpu_e2e.py drives the app with the official SDK.
if ! EXTRA="av==$AV_VERSION ftfy==6.3.1 wcwidth==0.9.4 nvidia-ml-py==13.615.71 python-multipart==0.0.34 openai==3.57.0 distro==1.9.0
     jiter==0.19.0 sniffio==1.3.1 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
     nvidia-cudnn-frontend==1.32.0 ${EXTRA:-}" \
     "$maker" "$cache" >"$log" 2>&1; then
  cat "$log" >&2; echo "make-device-kit failed" >&2; exit 1
fi
grep -v "is ignored: it is neither a file nor a directory" "$log" || true
ls "$cache"/ray-*.whl >/dev/null  # make-device-kit must have produced Ray

recipe=$(sha256sum "$self" | cut -c1-16)  # re-repack when this script changes
python3 - "$cache" "$kit" "$recipe" <<'PY'
import base64, collections, hashlib, os, re, subprocess, sys, tempfile, time, zipfile

cache, kit, recipe = sys.argv[1], sys.argv[2], sys.argv[3]
# zip comment of a repacked wheel: recipe (this script's hash) + sha256 of its source wheel
MARK = f"devkit-lzma {recipe} ".encode()
RAY_DROP = ("ray/rllib/", "ray/tune/", "ray/train/", "ray/data/", "ray/llm/")
RAY_UI = "ray/dashboard/client/build/"
RAY_UI_KEEP = {RAY_UI + "index.html", RAY_UI + "favicon.ico"}
# nvidia-cudnn-frontend: the FP8 attention (serve_app/pipeline/fp8_attention.py) builds an
# SDPA forward graph that runs on cuDNN's own engines. Dropped: the standalone kernel
# families (CuTe DSL sources, 28 of its 47 MB: separate APIs), the engines of other node
# types (conv, norm), the SDPA backward, the Blackwell (sm100/107/120) SDPA kernels and the
# C++ headers. Checked by tests/gpu/test_gpu_fp8_attention.py on an H100 with this kit.
CUDNN_DROP = tuple(f"cudnn/{family}/" for family in (
    "gemm", "linear_attention", "deepseek_sparse_attention", "gated_attention_block", "moe_ep",
    "block_sparse_attention", "flex_attention", "hstu", "QSA", "native_sparse_attention", "csa",
    "triangle_attention", "triangle_multiplicative_update", "causal_conv1d_bulk_sm100",
    "causal_conv1d_update_sm100", "gnn", "fla", "engram", "conv", "norm", "sdpa/bwd",
    "sdpa/fwd/kernels/sm100", "sdpa/fwd/kernels/sm107", "sdpa/fwd/kernels/sm120")) + ("include/",)

def dist_name(fn):
    return re.sub(r"[-_.]+", "-", os.path.basename(fn).split("-")[0]).lower()

# Two versions of one distribution stop the whole install: keep the newest file.
by_name = collections.defaultdict(list)
for f in os.listdir(cache):
    if f.endswith(".whl"):
        by_name[dist_name(f)].append(os.path.join(cache, f))
for name, files in by_name.items():
    files.sort(key=os.path.getmtime)
    for old in files[:-1]:
        print(f"removing older {os.path.basename(old)} (kept {os.path.basename(files[-1])})")
        os.remove(old)

def needs_strip(path):
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True).stdout
    return " .symtab " in out or " .debug_" in out

def strip_elf(data):
    with tempfile.NamedTemporaryFile(delete=False) as t:
        t.write(data)
    try:
        if not needs_strip(t.name):
            return data
        subprocess.run(["strip", "--strip-unneeded", t.name], check=True)
        with open(t.name, "rb") as f:
            return f.read()
    finally:
        os.unlink(t.name)

def keep(name, dist):
    if dist == "nvidia-cudnn-frontend":
        return not name.startswith(CUDNN_DROP)
    if dist != "ray":
        return True
    if name.startswith(RAY_DROP):
        return False
    if name.startswith(RAY_UI) and name not in RAY_UI_KEEP:
        return False
    return True

def repack(path, dst):
    t0 = time.time()
    is_ray = dist_name(path) == "ray"  # the dashboard stub below
    with open(path, "rb") as f:
        mark = MARK + hashlib.sha256(f.read()).hexdigest().encode()
    if os.path.exists(dst):
        with zipfile.ZipFile(dst) as z:
            if z.comment == mark:
                return False
    with zipfile.ZipFile(path) as z:
        entries = []
        for info in z.infolist():
            if info.is_dir() or not keep(info.filename, dist_name(path)):
                continue
            data = z.read(info)
            mode = (info.external_attr >> 16) & 0o7777 or 0o644
            if data[:4] == b"\x7fELF":
                data = strip_elf(data)
                mode |= 0o755
            entries.append((info.filename, info.date_time, mode, data))
    if is_ray:  # the dashboard needs build/static/ to exist
        entries.append((RAY_UI + "static/STRIPPED.txt", (2020, 1, 1, 0, 0, 0), 0o644,
                        b"Web UI assets removed to fit the device kit (bench/make_device_kit.sh).\n"))
    record = next(n for n, *_ in entries if re.fullmatch(r"[^/]+\.dist-info/RECORD", n))
    lines = []
    for name, _, _, data in entries:
        if name == record:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    lines.append(f"{record},,")
    rec = ("\n".join(lines) + "\n").encode()
    entries = [(n, d, m, rec if n == record else data) for n, d, m, data in entries]
    # dist-info last, RECORD at the very end, as wheel tools write them
    entries.sort(key=lambda e: (e[0].split("/")[0].endswith(".dist-info"), e[0] == record))
    tmp = dst + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as z:
        for name, date_time, mode, data in entries:
            zi = zipfile.ZipInfo(name, date_time=date_time)
            zi.compress_type = zipfile.ZIP_LZMA
            zi.external_attr = (0o100000 | mode) << 16
            z.writestr(zi, data)
        z.comment = mark
    os.replace(tmp, dst)
    print(f"repacked {os.path.basename(path)}: {os.path.getsize(path)/2**20:.2f} -> "
          f"{os.path.getsize(dst)/2**20:.2f} MiB ({time.time()-t0:.0f}s)", flush=True)
    return True

wanted = {f for f in os.listdir(cache) if f.endswith(".whl")}
for f in sorted(os.listdir(kit)):
    if f not in wanted:
        print(f"removing {f} from {kit} (not in {cache})")
        os.remove(os.path.join(kit, f))
for f in sorted(wanted):
    repack(os.path.join(cache, f), os.path.join(kit, f))
PY

ls -laS "$kit"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5/1048576, $9}'
total=$(find "$kit" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "total: $total bytes = $(awk -v t="$total" 'BEGIN {printf "%.2f", t/1048576}') MiB ($(du -sh "$kit" | cut -f1) on disk), $(ls "$kit"/*.whl | wc -l) wheels"
if [ "$total" -gt $((limit_mib * 1048576)) ]; then
  echo "kit is over ${limit_mib} MiB" >&2
  exit 1
fi
