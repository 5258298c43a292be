#!/bin/bash
# Runs the compiled forwarding path's tests and fuzz corpus against an AddressSanitizer +
# UndefinedBehaviorSanitizer build of sfu/media/_fastpath.c, then puts the normal build back.
#   scripts/fastpath_sanitize.sh [extra pytest args]
# Needs gcc (libasan, libubsan). The normal extension must be built (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SO=$($PY -c 'import sysconfig; print("sfu/media/_fastpath" + sysconfig.get_config_var("EXT_SUFFIX"))')
INCLUDE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$SO" ] || { echo "$SO is not built: pip install -e ." >&2; exit 1; }
BACKUP=$(mktemp)
cp "$SO" "$BACKUP"
trap 'cp "$BACKUP" "$SO"; rm -f "$BACKUP"' EXIT
gcc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -std=c11 \
    -D_GNU_SOURCE -I"$INCLUDE" sfu/media/_fastpath.c -o "$SO"
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
PYTHONPATH=$PWD timeout 900 $PY -m pytest -p no:cacheprovider -q \
    tests/sfu/media/test_fastpath.py "tests/test_fuzz_corpus.py::test_seeds_and_corpus_pass[fastpath]" "$@"
