# Sourced by install.sh and build-plugin.sh: the checkout as the package build sees it.
#
# copy_source DEST copies every file of the checkout into DEST except the checkout's own tooling and
# what earlier builds left (.git, .venv, build/, dist/, *.egg-info, caches), so a build in DEST leaves
# the checkout as it was and packages exactly what the checkout holds. source_digest DIR prints one
# digest of the names and contents of every file under DIR.

copy_source() {
  mkdir -p "$1"
  tar -C "$here" -c \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
    --exclude=.hypothesis . | tar -C "$1" -x
}

source_digest() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}
