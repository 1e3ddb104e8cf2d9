"""Tests of getdata.sh, run offline against the local mirror ../shared/data."""
import hashlib
import os
import shutil
import subprocess
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
}


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k != "AWD_DATA_MIRROR" and not k.startswith("AWD_URL_")}
    env.update(extra)
    return env


def run(*args, env=None, cwd=None):
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env or clean_env(), cwd=cwd, timeout=120)


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


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl needed for file:// URLs")
def test_download_path_with_local_archive(tmp_path):
    """The download branch, fed a small stand-in wikitext-2 zip via a file:// URL."""
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for s in ("train", "valid", "test"):
            z.writestr(f"wikitext-2/wiki.{s}.tokens", f" = {s} = \n words here \n")
    out = tmp_path / "data"
    env = clean_env(AWD_URL_WT2=archive.as_uri())
    r = run("--out", out, "wikitext-2", env=env)
    assert r.returncode == 0, r.stderr
    assert (out / "wikitext-2" / "valid.txt").read_text() == " = valid = \n words here \n"
    assert "wikitext-2: no published md5 for the laid-out files" in r.stdout
    assert no_leftovers(out)
    r = run("--out", out, "wikitext-2", env=env)
    assert r.returncode == 0 and "already present, verified" in r.stdout
