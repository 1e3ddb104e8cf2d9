#!/usr/bin/env bash
# getdata.sh: fetch the AWD-LSTM language-modelling datasets and lay them out as
#   <out>/<name>/{train,valid,test}.txt   (default <out> = ./data)
# Run `./getdata.sh --help` for usage.
set -euo pipefail

# ---------------------------------------------------------------------------
# Known md5 sums of the LAID-OUT files (what ends up under <out>/<name>/).
# One "<name>/<file> <md5>" pair per line; add lines here when a sum is
# established. A file without an entry is only checked for presence and
# non-zero size (wikitext-2, wikitext-103 and enwik8 have no entries yet:
# their laid-out sums could not be established offline, so none are invented).
# ---------------------------------------------------------------------------
KNOWN_MD5='
penn/train.txt      f26c4b92c5fdc7b3f8c7cdcb991d8420
penn/valid.txt      aa0affc06ff7c36e977d7cd49e3839bf
penn/test.txt       8b80168b89c18661a38ef683c0dc3721
pennchar/train.txt  874909f99060142f6b88cc74c34baaa2
pennchar/valid.txt  9e0fe5bec2a8bf43fd686dc23d5ab8bb
pennchar/test.txt   1f9a2d1afe00f76e8bfbe09a65439681
'

ALL_DATASETS="penn pennchar wikitext-2 wikitext-103 enwik8"
SPLITS="train valid test"

# Download locations. Each can be overridden from the environment (e.g. to
# point at a local copy of the archive, file:// URLs work with curl).
URL_PTB="${AWD_URL_PTB:-http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz}"
URL_WT2="${AWD_URL_WT2:-https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip}"
URL_WT103="${AWD_URL_WT103:-https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip}"
URL_ENWIK8="${AWD_URL_ENWIK8:-http://mattmahoney.net/dc/enwik8.zip}"

PROG="$(basename "$0")"

usage() {
    cat <<EOF
Usage: $PROG [--mirror DIR] [--out DIR] [DATASET ...]
       $PROG --help

Fetch datasets and lay them out as OUT/<name>/{train,valid,test}.txt.
DATASET is any of: $ALL_DATASETS
(no DATASET = all five).

Options:
  --mirror DIR  copy DIR/<name>/{train,valid,test}.txt instead of downloading
                (same layout as the output). Default: \$AWD_DATA_MIRROR if set.
  --out DIR     output root (default: ./data).
  -h, --help    show this help.

Sources (downloaded with curl or wget, unpacked with tar / unzip or python3):
  penn          simple-examples.tgz: simple-examples/data/ptb.{train,valid,test}.txt
  pennchar      simple-examples.tgz: simple-examples/data/ptb.char.{train,valid,test}.txt
  wikitext-2    wikitext-2-v1.zip:   wikitext-2/wiki.{train,valid,test}.tokens
  wikitext-103  wikitext-103-v1.zip: wikitext-103/wiki.{train,valid,test}.tokens
  enwik8        enwik8.zip: the 100,000,000-byte file enwik8, split into the
                first 90,000,000 bytes (train), next 5,000,000 (valid), last
                5,000,000 (test). Encoding of each split file: the split's raw
                bytes are cut at every newline byte (10); each piece becomes one
                output line holding the piece's byte values as decimal integers
                separated by single spaces; the lines are joined with "\n"
                (so the newline byte itself is represented by the line break,
                and an empty piece gives an empty line). Decoding is the exact
                inverse: split the file at "\n", turn each line's integers
                back into bytes, join the pieces with byte 10.
  Download URLs can be overridden with AWD_URL_PTB, AWD_URL_WT2,
  AWD_URL_WT103, AWD_URL_ENWIK8.

Verification: files with a known md5 (penn, pennchar) are checked against it;
the others are checked for presence and non-zero size (and, for enwik8, the
split sizes when splitting). Files are laid out in a temporary folder inside
OUT, verified, and only then moved into place. A dataset already present and
verified is left alone; one present but failing verification is reported and
left untouched (remove its folder and rerun). A folder holding only some of
the three files is laid out again (its files replaced by verified ones).

Exit status: 0 success, 1 failure (download, verification, missing data),
2 usage error (unknown option or dataset name, missing mirror folder).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: error: $*" >&2; echo "Try '$PROG --help'." >&2; exit 2; }

# ---------------------------------------------------------------- arguments
MIRROR="${AWD_DATA_MIRROR:-}"
OUT="data"
DATASETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --mirror)
            if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "--mirror needs a directory"; fi
            MIRROR="$2"; shift 2 ;;
        --mirror=*)
            MIRROR="${1#--mirror=}"
            [ -n "$MIRROR" ] || usage_error "--mirror needs a directory"
            shift ;;
        --out)
            if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "--out needs a directory"; fi
            OUT="$2"; shift 2 ;;
        --out=*)
            OUT="${1#--out=}"
            [ -n "$OUT" ] || usage_error "--out needs a directory"
            shift ;;
        --) shift; DATASETS+=("$@"); break ;;
        -*) usage_error "unknown option '$1'" ;;
        *) DATASETS+=("$1"); shift ;;
    esac
done

if [ ${#DATASETS[@]} -eq 0 ]; then
    read -r -a DATASETS <<< "$ALL_DATASETS"
fi
for ds in "${DATASETS[@]}"; do
    case " $ALL_DATASETS " in
        *" $ds "*) ;;
        *) usage_error "unknown dataset '$ds' (known: $ALL_DATASETS)" ;;
    esac
done

if [ -n "$MIRROR" ] && [ ! -d "$MIRROR" ]; then
    usage_error "mirror directory '$MIRROR' does not exist"
fi

# ---------------------------------------------------------------- helpers
md5_of() {
    if command -v md5sum >/dev/null 2>&1; then
        md5sum < "$1" | cut -d' ' -f1
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import hashlib, sys
h = hashlib.md5()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    else
        die "need md5sum or python3 to verify checksums"
    fi
}

expected_md5() {  # $1 = "<name>/<file>"; prints the sum or nothing
    printf '%s\n' "$KNOWN_MD5" | awk -v key="$1" '$1 == key { print $2; exit }'
}

has_all_sums() {  # $1 = dataset name
    local s
    for s in $SPLITS; do
        [ -n "$(expected_md5 "$1/$s.txt")" ] || return 1
    done
}

# verify_dir NAME DIR: check DIR/{train,valid,test}.txt for dataset NAME.
# Prints one line per problem on stderr; returns 1 if any.
verify_dir() {
    local name="$1" dir="$2" s f want got bad=0
    for s in $SPLITS; do
        f="$dir/$s.txt"
        if [ ! -f "$f" ]; then
            echo "$PROG: $name/$s.txt: missing" >&2; bad=1; continue
        fi
        if [ ! -s "$f" ]; then
            echo "$PROG: $name/$s.txt: empty file" >&2; bad=1; continue
        fi
        want="$(expected_md5 "$name/$s.txt")"
        [ -n "$want" ] || continue
        got="$(md5_of "$f")"
        if [ "$got" != "$want" ]; then
            echo "$PROG: $name/$s.txt: md5 mismatch: expected $want, got $got" >&2
            bad=1
        fi
    done
    return "$bad"
}

report_unsummed() {
    has_all_sums "$1" ||
        echo "$1: no published md5 for the laid-out files; checked presence and sizes only"
}

all_present() {  # $1 = dir
    local s
    for s in $SPLITS; do [ -f "$1/$s.txt" ] || return 1; done
}

any_present() {  # $1 = dir
    local s
    for s in $SPLITS; do [ -e "$1/$s.txt" ] && return 0; done
    return 1
}

WORK=""
cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run-wide scratch folder inside OUT (same file system, so the final move is a
# rename; big archives do not land on a small /tmp).
workdir() {
    if [ -z "$WORK" ]; then
        mkdir -p "$OUT"
        WORK="$(mktemp -d "$OUT/.getdata-tmp.XXXXXX")"
        mkdir -p "$WORK/downloads"
    fi
}

# fetch URL: download once per run into $WORK/downloads; prints the path.
fetch() {
    local url="$1" dest
    dest="$WORK/downloads/$(basename "$url")"
    if [ -f "$dest" ]; then echo "$dest"; return 0; fi
    if ! command -v curl >/dev/null 2>&1 && ! command -v wget >/dev/null 2>&1; then
        die "need curl or wget to download $url (or use --mirror DIR)"
    fi
    echo "downloading $url" >&2
    if command -v curl >/dev/null 2>&1; then
        local quiet=()
        [ -t 2 ] || quiet=(-sS)  # progress meter only on a terminal
        curl -fL --retry 3 ${quiet[@]+"${quiet[@]}"} -o "$dest.part" "$url" >&2 ||
            die "download failed: $url"
    else
        wget -q -O "$dest.part" "$url" >&2 || die "download failed: $url"
    fi
    mv "$dest.part" "$dest"
    echo "$dest"
}

# unpack ARCHIVE: extract once per run into ARCHIVE.d; prints that folder.
unpack() {
    local archive="$1" dir="$1.d"
    if [ -d "$dir" ]; then echo "$dir"; return 0; fi
    mkdir -p "$dir.part"
    case "$archive" in
        *.tgz|*.tar.gz)
            command -v tar >/dev/null 2>&1 || die "need tar to unpack $archive"
            tar -xzf "$archive" -C "$dir.part" || die "could not unpack $archive" ;;
        *.zip)
            if command -v unzip >/dev/null 2>&1; then
                unzip -q "$archive" -d "$dir.part" || die "could not unpack $archive"
            elif command -v python3 >/dev/null 2>&1; then
                python3 -c 'import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$dir.part" ||
                    die "could not unpack $archive"
            else
                die "need unzip or python3 to unpack $archive"
            fi ;;
        *) die "do not know how to unpack $archive" ;;
    esac
    mv "$dir.part" "$dir"
    echo "$dir"
}

# find_member DIR RELPATH: the file RELPATH under DIR; dies naming it when absent.
find_member() {
    local f="$1/$2"
    [ -f "$f" ] || die "expected '$2' in the downloaded archive, not found"
    echo "$f"
}

# copy_split SRC DEST: plain copy, writable by the user whatever SRC's mode.
copy_split() {
    cat "$1" > "$2" || die "could not copy $1"
}

# stage_download NAME STAGE: lay out NAME's three files in STAGE from the web.
stage_download() {
    # (each step assigned on its own line so that a failure inside a command
    # substitution stops the script under set -e)
    local name="$1" stage="$2" url archive dir member s
    case "$name" in
        penn|pennchar) url="$URL_PTB" ;;
        wikitext-2) url="$URL_WT2" ;;
        wikitext-103) url="$URL_WT103" ;;
        enwik8)
            command -v python3 >/dev/null 2>&1 || die "need python3 to split enwik8"
            url="$URL_ENWIK8" ;;
    esac
    archive="$(fetch "$url")"
    dir="$(unpack "$archive")"
    case "$name" in
        penn|pennchar)
            local prefix="ptb"
            if [ "$name" = pennchar ]; then prefix="ptb.char"; fi
            for s in $SPLITS; do
                member="$(find_member "$dir" "simple-examples/data/$prefix.$s.txt")"
                copy_split "$member" "$stage/$s.txt"
            done ;;
        wikitext-2|wikitext-103)
            for s in $SPLITS; do
                member="$(find_member "$dir" "$name/wiki.$s.tokens")"
                copy_split "$member" "$stage/$s.txt"
            done ;;
        enwik8)
            member="$(find_member "$dir" enwik8)"
            split_enwik8 "$member" "$stage" ;;
    esac
}

# split_enwik8 SRC STAGE: see the encoding described in --help.
split_enwik8() {
    echo "enwik8: splitting and encoding (takes a minute)" >&2
    python3 - "$1" "$2" <<'PY' || die "enwik8: split failed"
import os
import sys

src, out = sys.argv[1], sys.argv[2]
sizes = (("train", 90_000_000), ("valid", 5_000_000), ("test", 5_000_000))
total = sum(n for _, n in sizes)
with open(src, "rb") as f:
    data = f.read()
if len(data) != total:
    sys.exit(f"enwik8: source is {len(data):,} bytes, expected {total:,}")
decimal = [str(b).encode("ascii") for b in range(256)]
start = 0
for name, n in sizes:
    part = data[start:start + n]
    start += n
    if len(part) != n:
        sys.exit(f"enwik8: {name} split is {len(part):,} bytes, expected {n:,}")
    with open(os.path.join(out, name + ".txt"), "wb") as f:
        for i, piece in enumerate(part.split(b"\n")):
            if i:
                f.write(b"\n")
            f.write(b" ".join([decimal[b] for b in piece]))
    print(f"enwik8: {name}: {n:,} source bytes", file=sys.stderr)
PY
}

# stage_mirror NAME STAGE: copy NAME's three files from the mirror.
stage_mirror() {
    local name="$1" stage="$2" s
    for s in $SPLITS; do
        [ -f "$MIRROR/$name/$s.txt" ] ||
            die "dataset '$name' not in mirror '$MIRROR' (missing $MIRROR/$name/$s.txt)"
    done
    echo "$name: copying from mirror $MIRROR"
    for s in $SPLITS; do
        copy_split "$MIRROR/$name/$s.txt" "$stage/$s.txt"
    done
}

# ---------------------------------------------------------------- main
for name in "${DATASETS[@]}"; do
    dest="$OUT/$name"
    if all_present "$dest"; then
        if verify_dir "$name" "$dest"; then
            echo "$name: already present, verified"
            report_unsummed "$name"
            continue
        fi
        echo "$PROG: $name: existing files in '$dest' fail verification;" \
             "left untouched: remove '$dest' and rerun" >&2
        exit 1
    fi
    if any_present "$dest"; then
        echo "$name: '$dest' is incomplete; laying it out again" >&2
    fi

    workdir
    stage="$WORK/stage-$name"
    mkdir -p "$stage"
    if [ -n "$MIRROR" ]; then
        stage_mirror "$name" "$stage"
    else
        stage_download "$name" "$stage"
    fi

    verify_dir "$name" "$stage" || die "$name: verification failed; nothing written to '$dest'"
    mkdir -p "$dest"
    for s in $SPLITS; do
        mv -f "$stage/$s.txt" "$dest/$s.txt"
    done
    rm -rf "$stage"
    if has_all_sums "$name"; then
        echo "$name: laid out in $dest, md5 verified"
    else
        echo "$name: laid out in $dest"
        report_unsummed "$name"
    fi
done
