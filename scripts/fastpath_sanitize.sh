#!/bin/bash
# Runs the compiled media paths' tests and fuzz corpora against AddressSanitizer +
# UndefinedBehaviorSanitizer builds of sfu/media/_fastpath.c (forwarding) and _fastrecv.c (the
# shared socket's receive path), then puts the normal builds back.
#   scripts/fastpath_sanitize.sh [extra pytest args]
# Needs gcc (libasan, libubsan). The normal extensions must be built (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SUFFIX=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
INCLUDE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
BACKUP=$(mktemp -d)
trap 'cp "$BACKUP"/* sfu/media/; rm -rf "$BACKUP"' EXIT
for module in _fastpath _fastrecv; do
    SO=sfu/media/$module$SUFFIX
    [ -f "$SO" ] || { echo "$SO is not built: pip install -e ." >&2; exit 1; }
    cp "$SO" "$BACKUP/"
    gcc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -std=c11 \
        -D_GNU_SOURCE -I"$INCLUDE" "sfu/media/$module.c" -o "$SO"
done
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
PYTHONPATH=$PWD timeout 900 $PY -m pytest -p no:cacheprovider -q \
    tests/sfu/media/test_fastpath.py tests/sfu/media/test_fastrecv.py \
    "tests/test_fuzz_corpus.py::test_seeds_and_corpus_pass[fastpath]" \
    "tests/test_fuzz_corpus.py::test_seeds_and_corpus_pass[fastrecv]" "$@"
