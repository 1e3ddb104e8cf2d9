"""Tests of getdata.sh, run offline against the local mirror ../shared/data."""
import hashlib
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "getdata.sh"
MIRROR = (ROOT / ".." / "shared" / "data").resolve()

KNOWN = {
    "penn": {
        "train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
        "valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
        "test.txt": "8b80168b89c18661a38ef683c0dc3721",
    },
    "pennchar": {
        "train.txt": "874909f99060142f6b88cc74c34baaa2",
        "valid.txt": "9e0fe5bec2a8bf43fd686dc23d5ab8bb",
        "test.txt": "1f9a2d1afe00f76e8bfbe09a65439681",
    },
    "wikitext-2": {  # ../shared/data/MD5SUMS
        "train.txt": "34a77ebe59551b3a3b3d8c0a2797c976",
        "valid.txt": "d756d22ab2310e7e60c094bea5c5a8eb",
        "test.txt": "781c9418ab9414bd09e4aad825aae752",
    },
}
KNOWN_SHA1 = {
    "wikitext-2": {  # ../shared/data/SHA1SUMS (gluon-nlp's sums of the official zip's files)
        "train.txt": "863f29c46ef9d167fff4940ec821195882fe29d1",
        "valid.txt": "0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422",
        "test.txt": "c7b8ce0aa086fb34dab808c5c49224211eb2b172",
    },
}
# Published sums of the official archives (../shared/data/README.md).
ARCHIVES = {
    "wikitext-2": ("AWD_URL_WT2", "wikitext-2-v1.zip", "md5", "542ccefacc6c27f945fb54453812b3cd"),
    "wikitext-103": ("AWD_URL_WT103", "wikitext-103-v1.zip", "md5", "9ddaacaf6af0710eda8c456decff7832"),
    "enwik8": ("AWD_URL_ENWIK8", "enwik8.zip", "sha1", "d856b1ccd937c51aeb9c342e47666fb8c38e7e72"),
}
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k != "AWD_DATA_MIRROR" and not k.startswith("AWD_URL_")}
    env.update(extra)
    return env


def run(*args, env=None, cwd=None, script=SCRIPT):
    return subprocess.run([str(script), *map(str, args)], capture_output=True,
                          text=True, env=env or clean_env(), cwd=cwd, timeout=120)


def script_trusting(tmp_path, published, actual):
    """A copy of getdata.sh whose embedded sum `published` is replaced by `actual`.

    No stand-in archive can have the official archive's sum, so the download path past the
    archive check is run on this copy; everything else in it is getdata.sh verbatim.
    """
    text = SCRIPT.read_text()
    assert text.count(published) == 1
    copy = tmp_path / "getdata-copy.sh"
    copy.write_text(text.replace(published, actual))
    copy.chmod(0o755)
    return copy


def error_lines(stderr):
    return [line for line in stderr.splitlines() if "error:" in line]


def need_mirror(name):
    if not (MIRROR / name / "train.txt").is_file():
        pytest.skip(f"no local mirror of {name} at {MIRROR}")


def copy_dataset(src, dst):
    """Copy a mirror folder file by file (the mirror is read-only; copy no modes)."""
    dst.mkdir(parents=True)
    for f in ("train.txt", "valid.txt", "test.txt"):
        shutil.copyfile(src / f, dst / f)


def assert_known_sums(out, name):
    for f, want in KNOWN[name].items():
        assert md5(out / name / f) == want, f
    for f, want in KNOWN_SHA1.get(name, {}).items():
        assert sha1(out / name / f) == want, f


def no_leftovers(out):
    return [p.name for p in out.iterdir() if p.name.startswith(".getdata")] == []


def test_script_is_executable_and_has_help():
    assert os.access(SCRIPT, os.X_OK)
    r = run("--help")
    assert r.returncode == 0
    assert "Usage:" in r.stdout and "--mirror" in r.stdout


def test_penn_from_mirror_then_idempotent(tmp_path):
    need_mirror("penn")
    out = tmp_path / "data"
    r = run("--mirror", MIRROR, "--out", out, "penn")
    assert r.returncode == 0, r.stderr
    assert_known_sums(out, "penn")
    assert no_leftovers(out)
    r = run("--mirror", MIRROR, "--out", out, "penn")
    assert r.returncode == 0, r.stderr
    assert "penn: already present, verified" in r.stdout
    assert_known_sums(out, "penn")


def test_corrupted_mirror_is_rejected(tmp_path):
    need_mirror("penn")
    bad = tmp_path / "mirror"
    copy_dataset(MIRROR / "penn", bad / "penn")
    with open(bad / "penn" / "valid.txt", "ab") as f:
        f.write(b"x")
    out = tmp_path / "data"
    r = run("--mirror", bad, "--out", out, "penn")
    assert r.returncode != 0
    assert "valid.txt" in r.stderr
    assert KNOWN["penn"]["valid.txt"] in r.stderr  # expected sum is shown
    assert not (out / "penn" / "valid.txt").exists()
    assert not out.exists() or no_leftovers(out)


def test_corrupted_existing_output_is_reported_not_deleted(tmp_path):
    need_mirror("penn")
    out = tmp_path / "data"
    copy_dataset(MIRROR / "penn", out / "penn")
    target = out / "penn" / "test.txt"
    with open(target, "ab") as f:
        f.write(b"y")
    before = target.read_bytes()
    r = run("--mirror", MIRROR, "--out", out, "penn")
    assert r.returncode != 0
    assert "test.txt" in r.stderr and "remove" in r.stderr
    assert target.exists() and target.read_bytes() == before


def test_unknown_dataset_name(tmp_path):
    r = run("--out", tmp_path / "data", "penn", "not-a-dataset")
    assert r.returncode != 0
    assert "not-a-dataset" in r.stderr
    assert not (tmp_path / "data").exists()


def test_missing_mirror_dir(tmp_path):
    missing = tmp_path / "no-such-mirror"
    r = run("--mirror", missing, "--out", tmp_path / "data", "penn")
    assert r.returncode != 0
    assert str(missing) in r.stderr


def test_dataset_missing_from_mirror(tmp_path):
    (tmp_path / "mirror").mkdir()
    r = run("--mirror", tmp_path / "mirror", "--out", tmp_path / "data", "wikitext-2")
    assert r.returncode != 0
    assert "wikitext-2" in r.stderr


def test_pennchar_from_mirror(tmp_path):
    need_mirror("pennchar")
    out = tmp_path / "data"
    r = run("--mirror", MIRROR, "--out", out, "pennchar")
    assert r.returncode == 0, r.stderr
    assert_known_sums(out, "pennchar")


def test_mirror_from_environment_variable(tmp_path):
    need_mirror("penn")
    r = run("penn", env=clean_env(AWD_DATA_MIRROR=str(MIRROR)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_known_sums(tmp_path / "data", "penn")  # default output root is ./data


def test_wikitext2_from_mirror_verified_then_idempotent(tmp_path):
    need_mirror("wikitext-2")
    out = tmp_path / "data"
    r = run("--mirror", MIRROR, "--out", out, "wikitext-2")
    assert r.returncode == 0, r.stderr
    assert "wikitext-2: laid out in" in r.stdout and "md5 and sha1 verified" in r.stdout
    assert_known_sums(out, "wikitext-2")
    assert no_leftovers(out)
    r = run("--mirror", MIRROR, "--out", out, "wikitext-2")
    assert r.returncode == 0, r.stderr
    assert "wikitext-2: already present, verified (md5 and sha1)" in r.stdout


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_wikitext2_one_byte_change_is_refused(tmp_path, split):
    need_mirror("wikitext-2")
    bad = tmp_path / "mirror"
    copy_dataset(MIRROR / "wikitext-2", bad / "wikitext-2")
    changed = bad / "wikitext-2" / f"{split}.txt"
    content = bytearray(changed.read_bytes())
    content[len(content) // 2] ^= 1  # same size, one byte different
    changed.write_bytes(bytes(content))
    out = tmp_path / "data"
    r = run("--mirror", bad, "--out", out, "wikitext-2")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr  # one line, naming the file and both sums
    assert f"wikitext-2/{split}.txt" in lines[0]
    assert KNOWN["wikitext-2"][f"{split}.txt"] in lines[0] and md5(changed) in lines[0]
    assert not out.exists()  # nothing half-written, not even an empty output folder


def test_wikitext103_is_checked_by_sha1(tmp_path):
    """No md5 is published for WikiText-103's files: the sha1 alone must catch a wrong file."""
    fake = tmp_path / "mirror" / "wikitext-103"
    fake.mkdir(parents=True)
    for s in ("train", "valid", "test"):
        (fake / f"{s}.txt").write_text(f" = {s} = \n")
    out = tmp_path / "data"
    out.mkdir()
    r = run("--mirror", tmp_path / "mirror", "--out", out, "wikitext-103")
    assert r.returncode == 1
    [line] = error_lines(r.stderr)
    assert "wikitext-103/train.txt: sha1 mismatch" in line
    assert "b7497e2dfe77e72cfef5e3dbc61b7b53712ac211" in line and sha1(fake / "train.txt") in line
    assert list(out.iterdir()) == []  # a folder that existed before stays, empty


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl needed for file:// URLs")


@needs_curl
@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_download_refuses_an_archive_without_its_published_sum(tmp_path, name):
    variable, archive_name, algo, published = ARCHIVES[name]
    archive = tmp_path / archive_name
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"{name}/wiki.train.tokens", "not the real thing\n")
    out = tmp_path / "data"
    r = run("--out", out, name, env=clean_env(**{variable: archive.as_uri()}))
    assert r.returncode == 1
    [line] = error_lines(r.stderr)
    got = hashlib.new(algo, archive.read_bytes()).hexdigest()
    assert f"{archive_name}: {algo} mismatch: expected {published}, got {got}" in line
    assert not out.exists()


def stand_in_wikitext2_zip(folder, source):
    """A zip laid out as wikitext-2-v1.zip, holding the files of `source`."""
    archive = folder / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for s in ("train", "valid", "test"):
            z.write(source / f"{s}.txt", f"wikitext-2/wiki.{s}.tokens")
    return archive


@needs_curl
def test_download_path_lays_out_and_verifies_wikitext2(tmp_path):
    """The download branch on a stand-in zip holding the real files: archive checked, unpacked,
    laid out and checked against the files' published sums."""
    need_mirror("wikitext-2")
    archive = stand_in_wikitext2_zip(tmp_path, MIRROR / "wikitext-2")
    script = script_trusting(tmp_path, ARCHIVES["wikitext-2"][3], md5(archive))
    out = tmp_path / "data"
    env = clean_env(AWD_URL_WT2=archive.as_uri())
    r = run("--out", out, "wikitext-2", env=env, script=script)
    assert r.returncode == 0, r.stderr
    assert "md5 and sha1 verified" in r.stdout
    assert_known_sums(out, "wikitext-2")
    assert no_leftovers(out)
    r = run("--out", out, "wikitext-2", env=env, script=script)
    assert r.returncode == 0 and "already present, verified" in r.stdout


@needs_curl
def test_download_path_checks_the_unpacked_files(tmp_path):
    """An archive that passes its own check (here: by construction) still has its files checked."""
    need_mirror("wikitext-2")
    source = tmp_path / "source"
    copy_dataset(MIRROR / "wikitext-2", source)
    with open(source / "test.txt", "ab") as f:
        f.write(b"x")
    archive = stand_in_wikitext2_zip(tmp_path, source)
    script = script_trusting(tmp_path, ARCHIVES["wikitext-2"][3], md5(archive))
    out = tmp_path / "data"
    r = run("--out", out, "wikitext-2", env=clean_env(AWD_URL_WT2=archive.as_uri()), script=script)
    assert r.returncode == 1
    [line] = error_lines(r.stderr)
    assert "wikitext-2/test.txt: md5 mismatch" in line and KNOWN["wikitext-2"]["test.txt"] in line
    assert not out.exists()


@needs_curl
def test_download_path_checks_the_unpacked_enwik8(tmp_path):
    """enwik8's splits have no published sums, so the unpacked file is checked before splitting."""
    archive = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("enwik8", b"<mediawiki>\n" * 10)
    script = script_trusting(tmp_path, ARCHIVES["enwik8"][3], sha1(archive))
    out = tmp_path / "data"
    r = run("--out", out, "enwik8", env=clean_env(AWD_URL_ENWIK8=archive.as_uri()), script=script)
    assert r.returncode == 1
    [line] = error_lines(r.stderr)
    assert "enwik8.zip/enwik8: md5 mismatch" in line and ENWIK8_MD5 in line
    assert not out.exists()


# ---------------------------------------------------------------- runs at once, killed runs, offline machines

def slowed(tmp_path, command, seconds):
    """An environment whose PATH runs `command` `seconds` late: a window for another run to act in."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    real = shutil.which(command)
    shim = shims / command
    shim.write_text(f'#!/bin/sh\nsleep {seconds}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return clean_env(PATH=f"{shims}:{os.environ['PATH']}")


@pytest.mark.slow
def test_two_runs_into_one_out_take_turns(tmp_path):
    need_mirror("penn")
    out = tmp_path / "data"
    env = slowed(tmp_path, "mv", 1)  # each run checks for OUT/penn, then moves its copy there late
    argv = [str(SCRIPT), "--mirror", str(MIRROR), "--out", str(out), "penn"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [p.communicate(timeout=120) + (p.returncode,) for p in (first, second)]
    assert [code for _, _, code in results] == [0, 0], results
    assert sorted(os.listdir(out / "penn")) == ["test.txt", "train.txt", "valid.txt"]  # no second copy inside
    assert_known_sums(out, "penn")
    assert "penn: already present, verified" in results[1][0]
    assert no_leftovers(out)


def test_a_run_killed_with_sigkill_leaves_nothing_a_later_run_keeps(tmp_path):
    need_mirror("penn")
    out = tmp_path / "data"
    argv = [str(SCRIPT), "--mirror", str(MIRROR), "--out", str(out), "penn"]
    killed = subprocess.Popen(argv, env=slowed(tmp_path, "md5sum", 30), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not list(out.glob(".getdata-tmp.*/stage-penn/test.txt")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)  # the run and its helpers: no trap runs
    killed.wait()
    assert list(out.glob(".getdata-tmp.*"))
    r = run("--mirror", MIRROR, "--out", out, "penn")
    assert r.returncode == 0, r.stderr
    assert_known_sums(out, "penn")
    assert no_leftovers(out)


@pytest.mark.parametrize("where", ["OUT/penn", "OUT"])
def test_a_file_where_a_folder_goes_is_one_clear_line(tmp_path, where):
    need_mirror("penn")
    out = tmp_path / "data"
    if where == "OUT/penn":
        out.mkdir()
    blocker = out / "penn" if where == "OUT/penn" else out
    blocker.write_text("not a folder\n")
    r = run("--mirror", MIRROR, "--out", out, "penn")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"getdata.sh: error: {'--out ' if where == 'OUT' else ''}'{blocker}' is a file, "
                                     f"not a folder; move it away {'or give another --out' if where == 'OUT' else 'and rerun'}"]
    assert blocker.read_text() == "not a folder\n"


def test_a_failed_download_names_the_way_out_for_an_offline_machine(tmp_path):
    out = tmp_path / "data"
    r = run("--out", out, "penn", env=clean_env(AWD_URL_PTB="http://127.0.0.1:9/simple-examples.tgz"))
    assert r.returncode == 1
    error, = error_lines(r.stderr)
    assert "download failed: http://127.0.0.1:9/simple-examples.tgz" in error
    assert "--mirror DIR" in error and "AWD_DATA_MIRROR" in error
    assert not out.exists()
