#!/usr/bin/env bash
# Regenerate the AnnData compatibility corpus in tests/corpus/data/.
#
#   tests/corpus/regenerate.sh                 # every set + pbmc68k + check + manifest
#   tests/corpus/regenerate.sh anndata-0.7.8   # only the named set(s) (+ check + manifest)
#
# Environment:
#   CORPUS_VENVS   where the writer venvs go            (default /tmp/corpus-venvs)
#   READERS        reader interpreters for the check    (default /work/venv311/bin/python
#                                                        /work/venv312/bin/python)
#   SKIP_INSTALL=1 reuse existing venvs as they are
#
# Needs pyenv with the interpreters below, and PyPI (wheels only: --only-binary).
# Every writer venv is installed from requirements/<set>.txt, a complete
# `pip freeze` (installed with --no-deps), so a rerun gives the same environment.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENVS=${CORPUS_VENVS:-/tmp/corpus-venvs}
DATA=$HERE/data
META=$HERE/meta
REQ=$HERE/requirements
READERS=${READERS:-"/work/venv311/bin/python /work/venv312/bin/python"}
PIP_VERSION=24.0
SCANPY_WHEEL_VERSION=1.11.5   # the .h5ad inside is byte-identical from 1.4.6 to 1.11.5
PBMC_SHA256=e71d41e737c941559b7c57c9243bdb3d2c889c2adfdf00e3422ac6b46783676f

# set name (= file stem, = requirements/<name>.txt) | pyenv version | make_corpus.py flags
SETS=(
  "anndata-0.6.22|3.8.18|"
  "anndata-0.7.8|3.8.18|"
  "anndata-0.8.0|3.9.18|"
  "anndata-0.9.2|3.9.18|"
  "anndata-0.10.9|3.10.13|--scanpy"
  "anndata-0.11.4|3.10.13|"
  "anndata-0.12.19|3.11.7|--extras"
  "anndata-0.13.4-pandas3|3.12.1|--extras"
  "anndata-0.13.4-pandas2|3.12.1|--extras"
)

ONLY=("$@")
wanted() {
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local s
  for s in "${ONLY[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

mkdir -p "$DATA" "$META" "$VENVS"
if [ ${#ONLY[@]} -eq 0 ]; then
  # full run: start from scratch so renamed/removed files do not linger
  rm -rf "${DATA:?}"/* "${META:?}"/*
fi

START=$(date +%s)
for spec in "${SETS[@]}"; do
  IFS='|' read -r name pyver flags <<<"$spec"
  wanted "$name" || continue
  venv=$VENVS/$name
  echo "=== $name (python $pyver) $flags"
  if [ "${SKIP_INSTALL:-0}" != 1 ] || [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    PYENV_VERSION=$pyver python -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "pip==$PIP_VERSION"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      --only-binary=:all: --no-deps -r "$REQ/$name.txt"
    "$venv/bin/python" -m pip check
  fi
  # drop this set's old files (main, extras, scanpy) before rewriting
  rm -rf "$DATA/$name".* "$DATA/$name"-*
  # shellcheck disable=SC2086
  "$venv/bin/python" "$HERE/make_corpus.py" "$DATA" --tag "$name" --meta-dir "$META" $flags
  "$venv/bin/python" -m pip freeze >"$META/$name.freeze.txt"
done

if wanted scanpy-pbmc68k_reduced; then
  echo "=== scanpy-pbmc68k_reduced (from the scanpy $SCANPY_WHEEL_VERSION wheel)"
  tmp=$(mktemp -d)
  python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    "scanpy==$SCANPY_WHEEL_VERSION" -d "$tmp"
  python - "$tmp" "$DATA/scanpy-pbmc68k_reduced.h5ad" "$PBMC_SHA256" "$SCANPY_WHEEL_VERSION" "$META" <<'EOF'
import glob, hashlib, json, os, sys, zipfile
tmp, out, sha, ver, meta = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, "scanpy-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    blob = z.read("scanpy/datasets/10x_pbmc68k_reduced.h5ad")
got = hashlib.sha256(blob).hexdigest()
if got != sha:
    sys.exit("pbmc68k_reduced sha256 %s != expected %s" % (got, sha))
with open(out, "wb") as fh:
    fh.write(blob)
json.dump({
    "tag": "scanpy-pbmc68k_reduced",
    "anndata": "0.6.x (scanpy example data, file dated 2018-2020; no encoding attributes)",
    "python": None, "numpy": None, "pandas": None, "h5py": None, "zarr": None,
    "source": "scanpy==%s wheel: scanpy/datasets/10x_pbmc68k_reduced.h5ad" % ver,
    "sha256": sha,
    "files": {"scanpy-pbmc68k_reduced.h5ad": {
        "format": "h5ad", "kind": "scanpy-example", "size_bytes": len(blob), "n_files": 1,
        "shape": [700, 765], "features": [], "dropped": {},
        "notes": "anndata 0.6-era layout: obs/var/raw.var as compound datasets, obsm/varm as "
                 "structured arrays, categories in uns/<col>_categories, raw as raw.X/raw.var, "
                 "neighbors graphs under uns/neighbors, dense X, no encoding-type attributes",
    }},
}, open(os.path.join(meta, "scanpy-pbmc68k_reduced.json"), "w"), indent=1, sort_keys=True)
print("wrote scanpy-pbmc68k_reduced.h5ad %d bytes" % len(blob))
EOF
  rm -rf "$tmp"
fi
GEN_END=$(date +%s)

# which reader stack reads which file, then the manifest
for py in $READERS; do
  if [ -x "$py" ] && "$py" -c 'import anndata' 2>/dev/null; then
    "$py" "$HERE/check_corpus.py" check "$HERE"
  else
    echo "reader $py not usable (no anndata); its readcheck is left as it was" >&2
  fi
done
python3 "$HERE/check_corpus.py" manifest "$HERE"
END=$(date +%s)
echo "generation: $((GEN_END - START)) s, total: $((END - START)) s"
