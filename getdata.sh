#!/usr/bin/env bash
# getdata.sh: fetch the AWD-LSTM language-modelling datasets and lay them out as
#   <out>/<name>/{train,valid,test}.txt   (default <out> = ./data)
# Run `./getdata.sh --help` for usage.
set -euo pipefail

# ---------------------------------------------------------------------------
# Published checksums, embedded here so that nothing outside this script is
# trusted at run time. One "<key> <algorithm> <sum>" per line.
#   <name>/<split>.txt  a LAID-OUT file (what ends up under <out>/<name>/),
#                       checked after a download and after a mirror copy;
#   <archive>           a downloaded archive (by its official name, whatever
#                       URL it came from), checked before it is unpacked;
#   <archive>/<member>  a file unpacked from it, checked before it is used.
# wikitext-2: md5 and sha1 of wiki.{train,valid,test}.tokens (sha1: the
# per-file sums gluon-nlp checks after unpacking the official zip); the
# laid-out files are byte copies of them. wikitext-103: gluon-nlp's sha1 of
# the same three files. enwik8: the laid-out files are an encoding of the
# verified 100,000,000-byte enwik8 and have no published sums of their own.
# simple-examples.tgz (penn, pennchar) has no published sum; its laid-out
# files are checked against theirs.
# ---------------------------------------------------------------------------
KNOWN_SUMS='
penn/train.txt          md5   f26c4b92c5fdc7b3f8c7cdcb991d8420
penn/valid.txt          md5   aa0affc06ff7c36e977d7cd49e3839bf
penn/test.txt           md5   8b80168b89c18661a38ef683c0dc3721
pennchar/train.txt      md5   874909f99060142f6b88cc74c34baaa2
pennchar/valid.txt      md5   9e0fe5bec2a8bf43fd686dc23d5ab8bb
pennchar/test.txt       md5   1f9a2d1afe00f76e8bfbe09a65439681
wikitext-2/train.txt    md5   34a77ebe59551b3a3b3d8c0a2797c976
wikitext-2/train.txt    sha1  863f29c46ef9d167fff4940ec821195882fe29d1
wikitext-2/valid.txt    md5   d756d22ab2310e7e60c094bea5c5a8eb
wikitext-2/valid.txt    sha1  0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422
wikitext-2/test.txt     md5   781c9418ab9414bd09e4aad825aae752
wikitext-2/test.txt     sha1  c7b8ce0aa086fb34dab808c5c49224211eb2b172
wikitext-103/train.txt  sha1  b7497e2dfe77e72cfef5e3dbc61b7b53712ac211
wikitext-103/valid.txt  sha1  c326ac59dc587676d58c422eb8a03e119582f92b
wikitext-103/test.txt   sha1  8a5befc548865cec54ed4273cf87dbbad60d1e47
wikitext-2-v1.zip       md5   542ccefacc6c27f945fb54453812b3cd
wikitext-103-v1.zip     md5   9ddaacaf6af0710eda8c456decff7832
enwik8.zip              sha1  d856b1ccd937c51aeb9c342e47666fb8c38e7e72
enwik8.zip/enwik8       md5   a1fa5ffddb56f4953e226637dabbb36a
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

Verification: every laid-out file with a published sum is checked against it
(penn, pennchar: md5; wikitext-2: md5 and sha1; wikitext-103: sha1), after a
download and after a mirror copy alike. A download is also checked against
the archive's published sum before it is unpacked (wikitext-2-v1.zip and
wikitext-103-v1.zip: md5; enwik8.zip: sha1) and, for enwik8, the unpacked
100,000,000-byte file against its md5 before it is split. The enwik8 splits
have no published sums of their own: from a mirror they are only checked for
presence and non-zero size. A mismatch stops the run with one line naming the
file and both sums. Files are laid out in a temporary folder inside OUT,
verified, and only then moved into place, so a failure leaves nothing
half-written there. A dataset already present and verified is left alone; one
present but failing verification is reported and left untouched (remove its
folder and rerun). A folder holding only some of the three files is laid out
again (its files replaced by verified ones). Runs into one OUT take turns (each
holds a lock on OUT while it runs); the scratch folders (OUT/.getdata-tmp.*)
of a run that was killed are removed by the next run.

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
# sum_of ALGO FILE: the md5 or sha1 of FILE, in hex.
sum_of() {
    if command -v "${1}sum" >/dev/null 2>&1; then
        "${1}sum" < "$2" | cut -d' ' -f1
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import hashlib, sys
h = hashlib.new(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1" "$2"
    else
        die "need ${1}sum or python3 to verify checksums"
    fi
}

known_sums() {  # $1 = key; prints "<algorithm> <sum>" lines, none when unknown
    printf '%s\n' "$KNOWN_SUMS" | awk -v key="$1" '$1 == key { print $2, $3 }'
}

# sum_names NAME: the algorithms NAME's laid-out files are all checked with
# ("md5", "md5 and sha1", ...); nothing when some file has no sum.
sum_names() {
    local s algos="" first=1 these
    for s in $SPLITS; do
        these="$(known_sums "$1/$s.txt" | cut -d' ' -f1 | paste -sd' ' -)"
        [ -n "$these" ] || return 0
        if [ "$first" = 1 ]; then algos="$these"; first=0; fi
    done
    echo "${algos// / and }"
}

# check_sums KEY FILE: FILE against every published sum of KEY (none: passes).
# On a mismatch sets PROBLEM to "KEY: <algo> mismatch: expected X, got Y" and
# returns 1. (Called outside command substitutions, so PROBLEM survives.)
PROBLEM=""
check_sums() {
    local key="$1" file="$2" algo want got
    while read -r algo want; do
        [ -n "$algo" ] || continue
        got="$(sum_of "$algo" "$file")"
        if [ "$got" != "$want" ]; then
            PROBLEM="$key: $algo mismatch: expected $want, got $got"
            return 1
        fi
    done < <(known_sums "$key")
}

# verify_dir NAME DIR: check DIR/{train,valid,test}.txt for dataset NAME:
# present, non-empty, and equal to their published sums. Stops at the first
# problem, described in PROBLEM; returns 1 then.
verify_dir() {
    local name="$1" dir="$2" s f
    for s in $SPLITS; do
        f="$dir/$s.txt"
        if [ ! -f "$f" ]; then PROBLEM="$name/$s.txt: missing"; return 1; fi
        if [ ! -s "$f" ]; then PROBLEM="$name/$s.txt: empty file"; return 1; fi
        check_sums "$name/$s.txt" "$f" || return 1
    done
}

# verified_note NAME [SOURCE_VERIFIED]: the end of the "laid out" line.
verified_note() {
    local algos
    algos="$(sum_names "$1")"
    if [ -n "$algos" ]; then
        echo "$algos verified"
    elif [ "${2:-}" = source ]; then
        echo "split from the verified source (no published sums for the split files)"
    else
        echo "no published sums for the laid-out files; checked presence and sizes only"
    fi
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
OUT_CREATED=""
# On any exit: remove the scratch folder, and OUT itself when this run created
# it and nothing was laid out in it (a failed first run leaves no empty folder).
cleanup() {
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
    if [ -n "$OUT_CREATED" ]; then rmdir "$OUT" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# lock_out: from here to the end of the run, hold an exclusive lock on the
# folder OUT itself (no lock file to leave behind), so that runs into one OUT
# take turns: a second run waits, then finds the datasets laid out. Holding it,
# remove the scratch folders of runs that were killed (kill -9 skips cleanup);
# no live run can be using one.
LOCK_FD=""
lock_out() {
    if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then
        die "--out '$OUT' is a file, not a folder; move it away or give another --out"
    fi
    while :; do
        if [ ! -d "$OUT" ]; then
            mkdir -p "$OUT" || die "cannot create the output folder '$OUT'"
            OUT_CREATED=1
        fi
        exec {LOCK_FD}<"$OUT"
        if ! take_lock -n; then
            echo "$PROG: waiting for another $PROG run writing into '$OUT'" >&2
            take_lock || die "cannot lock '$OUT'"
        fi
        # A first run that failed removes the OUT it created: then lock the new one.
        if [ "$OUT" -ef "/dev/fd/$LOCK_FD" ]; then break; fi
        exec {LOCK_FD}<&-
    done
    rm -rf "$OUT"/.getdata-tmp.*
}

# take_lock [-n]: flock on LOCK_FD (-n: fail at once instead of waiting), with
# flock(1), or python3 where util-linux is missing (the lock belongs to the
# open folder, so it outlives the helper that takes it).
take_lock() {
    if command -v flock >/dev/null 2>&1; then
        flock ${1:+"$1"} "$LOCK_FD"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import fcntl, sys
fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | (fcntl.LOCK_NB if sys.argv[2:] == ["-n"] else 0))' \
            "$LOCK_FD" ${1:+"$1"} 2>/dev/null
    else
        die "need flock or python3 to keep concurrent runs into '$OUT' apart"
    fi
}

# Run-wide scratch folder inside OUT (same file system, so the final move is a
# rename; big archives do not land on a small /tmp).
workdir() {
    if [ -z "$WORK" ]; then
        WORK="$(mktemp -d "$OUT/.getdata-tmp.XXXXXX")"
        mkdir -p "$WORK/downloads"
    fi
}

# The way out for a machine without network (or behind a proxy).
OFFLINE="no network? run $PROG on a machine that has one and give a copy of its output folder here as --mirror DIR (or AWD_DATA_MIRROR=DIR)"

# fetch URL: download once per run into $WORK/downloads; prints the path.
fetch() {
    local url="$1" dest
    dest="$WORK/downloads/$(basename "$url")"
    if [ -f "$dest" ]; then echo "$dest"; return 0; fi
    if ! command -v curl >/dev/null 2>&1 && ! command -v wget >/dev/null 2>&1; then
        die "need curl or wget to download $url; $OFFLINE"
    fi
    echo "downloading $url" >&2
    if command -v curl >/dev/null 2>&1; then
        local quiet=()
        [ -t 2 ] || quiet=(-sS)  # progress meter only on a terminal
        curl -fL --retry 3 ${quiet[@]+"${quiet[@]}"} -o "$dest.part" "$url" >&2 ||
            die "download failed: $url; $OFFLINE"
    else
        wget -q -O "$dest.part" "$url" >&2 || die "download failed: $url; $OFFLINE"
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

# check_download KEY FILE WHAT NAME: dies, in one line, when FILE does not
# match KEY's published sums; WHAT says where FILE came from.
check_download() {
    check_sums "$1" "$2" ||
        die "$PROBLEM ($3); nothing written to '$OUT/$4'"
}

# stage_download NAME STAGE: lay out NAME's three files in STAGE from the web.
stage_download() {
    # (each step assigned on its own line so that a failure inside a command
    # substitution stops the script under set -e)
    local name="$1" stage="$2" url official archive dir member s
    # official: the archive's published name, which keys its sums whatever
    # URL (AWD_URL_*) it was fetched from.
    case "$name" in
        penn|pennchar) url="$URL_PTB"; official=simple-examples.tgz ;;
        wikitext-2) url="$URL_WT2"; official=wikitext-2-v1.zip ;;
        wikitext-103) url="$URL_WT103"; official=wikitext-103-v1.zip ;;
        enwik8)
            command -v python3 >/dev/null 2>&1 || die "need python3 to split enwik8"
            url="$URL_ENWIK8"; official=enwik8.zip ;;
    esac
    archive="$(fetch "$url")"
    # Before unpacking: a wrong or truncated archive is refused as a whole.
    check_download "$official" "$archive" "downloaded from $url" "$name"
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
            # The split files have no published sums: their source must match.
            check_download enwik8.zip/enwik8 "$member" "unpacked from $url" "$name"
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
lock_out
for name in "${DATASETS[@]}"; do
    dest="$OUT/$name"
    if [ -e "$dest" ] && [ ! -d "$dest" ]; then
        die "'$dest' is a file, not a folder; move it away and rerun"
    fi
    if all_present "$dest"; then
        if ! verify_dir "$name" "$dest"; then
            die "$PROBLEM in existing '$dest'; left untouched: remove '$dest' and rerun"
        fi
        if [ -n "$(sum_names "$name")" ]; then
            echo "$name: already present, verified ($(sum_names "$name"))"
        else
            echo "$name: already present; $(verified_note "$name")"
        fi
        continue
    fi
    if any_present "$dest"; then
        echo "$name: '$dest' is incomplete; laying it out again" >&2
    fi

    workdir
    stage="$WORK/stage-$name"
    mkdir -p "$stage"
    if [ -n "$MIRROR" ]; then
        stage_mirror "$name" "$stage"
        from="copied from '$MIRROR/$name'"; source_checked=""
    else
        stage_download "$name" "$stage"
        from="unpacked from the download"; source_checked=source
    fi

    # Only verified files reach dest: the whole folder in one rename when dest
    # is new, file by file over an incomplete one.
    verify_dir "$name" "$stage" || die "$PROBLEM ($from); nothing written to '$dest'"
    if [ -e "$dest" ]; then
        for s in $SPLITS; do
            mv -f "$stage/$s.txt" "$dest/$s.txt"
        done
        rm -rf "$stage"
    else
        mv "$stage" "$dest"
    fi
    echo "$name: laid out in $dest, $(verified_note "$name" "$source_checked")"
done
