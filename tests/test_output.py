"""Output folders that are safe: a run removes only what it made, never by pattern; the lock
is never followed through a link and is removed at the end; a refused command leaves nothing;
disk full and read-only folders are one line, exit status 2, and no partial result set."""
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fire_reg import geometry
from fire_reg.cli import main
from fire_reg.data.fire import FireDataset
from fire_reg.geometry import transforms
from fire_reg.io.errors import InputError
from fire_reg.io.output import (LOCK_NAME, OutputError, atomic_folder, atomic_path,
                                exclusive_output, write_json)
from fire_reg.register.result import Registration, write_files

USER_FILES = {"notes/.draft.partial": "my draft", ".thesis.part2.tex": "chapter 2",
              ".transform.abc.part.json": "{", "x.part": "x",
              ".a.fire-reg-1-0000000a.part.json": "no random part: not our scheme"}


def plant(folder: Path) -> None:
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def assert_planted(folder: Path) -> None:
    assert {name: (folder / name).read_text() for name in USER_FILES} == USER_FILES


def temporaries(folder: Path) -> list[Path]:
    """Files and folders named like fire-reg's temporaries, but for the planted user files."""
    planted = {Path(name).name for name in USER_FILES}
    return [path for path in folder.rglob("*")
            if ".fire-reg-" in path.name and path.name not in planted]


def identity_result(size, status="ok") -> Registration:
    return Registration(transforms.Affine(geometry.identity()), status, f"test {status}",
                        size, size)


def errors_in(err: str) -> list[str]:
    """fire-reg's own lines on stderr (not the progress bars)."""
    return [line for line in err.splitlines() if line.startswith("fire-reg:")]


def test_user_files_named_like_temporaries_are_untouched(tmp_path):
    out = tmp_path / "out"
    plant(out)
    for _ in range(2):  # the first run, then one finding the folder as the first left it
        with exclusive_output(out):
            write_json(out / "sub" / "a.json", {"a": 1})
            with pytest.raises(RuntimeError):
                with atomic_path(out / "b.json") as tmp:
                    tmp.write_text("half")
                    raise RuntimeError("stopped mid-write")
        assert_planted(out)
    assert not temporaries(out) and not (out / LOCK_NAME).exists()
    assert json.loads((out / "sub" / "a.json").read_text()) == {"a": 1}


def test_temporaries_of_a_killed_run_are_removed_by_the_next_one_only(tmp_path):
    """A run killed by SIGKILL mid-write leaves its temporary file and folder; the next run
    that takes the lock removes exactly those (its run id is in the lock), nothing else."""
    out = tmp_path / "out"
    plant(out)
    other = out / "child" / ".x.fire-reg-77-0badc0de-abcdefgh.part.json"  # another run's
    other.parent.mkdir()
    other.write_text("another run's temporary")
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from fire_reg.io.output import atomic_folder, atomic_path, exclusive_output
        with exclusive_output({str(out)!r}):
            with atomic_folder({str(out / "S01")!r}) as folder:
                (folder / "transform.json").write_text("{{}}")
                with atomic_path({str(out / "pairs" / "P01.json")!r}) as tmp:
                    tmp.write_text("half")
                    os.kill(os.getpid(), signal.SIGKILL)
        """)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    left = temporaries(out)
    assert len(left) == 3 and (out / LOCK_NAME).exists()  # file, folder, the other run's
    with exclusive_output(out):
        pass
    assert temporaries(out) == [other] and not (out / "S01").exists()
    assert_planted(out)
    assert not (out / LOCK_NAME).exists()


def test_empty_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["register", "a.png", "b.png", "--out", ""])
    err = capsys.readouterr().err
    assert code == 2 and errors_in(err) == err.strip().splitlines()
    assert "--out" in err and "empty" in err and list(tmp_path.iterdir()) == []


def test_symlinked_lock_is_refused_and_its_target_untouched(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(target)
    with pytest.raises(InputError, match="symbolic link"):
        with exclusive_output(out):
            pass
    code = main(["register", "a.png", "b.png", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(errors_in(err)) == 1 and "symbolic link" in err
    assert target.read_text() == "precious" and (out / LOCK_NAME).is_symlink()
    (out / LOCK_NAME).unlink()
    os.link(target, out / LOCK_NAME)  # a hard link would be truncated just the same
    with pytest.raises(InputError, match="hard link"):
        with exclusive_output(out):
            pass
    assert target.read_text() == "precious"


def test_refused_command_leaves_nothing_behind(small_fire, tmp_path, capsys):
    pair = FireDataset(small_fire)["S01"]
    out = tmp_path / "new" / "deeper"
    code = main(["register", str(pair.fixed_path), str(tmp_path / "missing.jpg"),
                 "--out", str(out)])
    assert code == 2 and "missing.jpg" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither folder, nor a lock
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["register", str(pair.fixed_path), str(tmp_path / "missing.jpg"),
                 "--out", str(kept)]) == 2
    assert kept.is_dir() and list(kept.iterdir()) == []  # the user's folder stays; no lock


def test_read_only_output_folder_is_one_line_exit_2(small_fire, tmp_path, monkeypatch, capsys):
    """As root chmod cannot make a folder read-only, so the file system's answer is injected
    where the operating system gives it: creating anything under the folder fails with EROFS."""
    pair = FireDataset(small_fire)["S01"]
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path):
        if Path(path).is_relative_to(read_only):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            refused(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if not os.path.exists(path):  # an existing folder: EEXIST comes first, as in Linux
            refused(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    for out in (read_only, read_only / "new"):
        code = main(["register", str(pair.fixed_path), str(pair.moving_path),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and errors_in(err) == [
            f"fire-reg: error: {read_only}: cannot write here: Read-only file system"], err
    assert list(read_only.iterdir()) == []


def test_disk_full_leaves_no_partial_result_set(small_fire, tmp_path, monkeypatch):
    """ENOSPC on the second file of a set: OutputError naming the folder; a new folder never
    appears, an existing one keeps its complete older set; no temporary is left."""
    pair = FireDataset(small_fire)["S01"]
    size = pair.size("fixed")
    older = tmp_path / "older"
    write_files(older, identity_result(size), pair.fixed_path, pair.moving_path)
    before = {path.name: path.read_bytes() for path in older.iterdir()}
    written = []
    real = Path.write_bytes

    def full_disk(self, data):
        written.append(self.name)
        if len(written) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    for out in (tmp_path / "fresh", older):
        written.clear()
        with pytest.raises(OutputError, match="No space left on device") as error:
            write_files(out, identity_result(size), pair.fixed_path, pair.moving_path)
        assert error.value.path == str(out) and len(written) == 2
    assert not (tmp_path / "fresh").exists() and not temporaries(tmp_path)
    assert {path.name: path.read_bytes() for path in older.iterdir()} == before


def test_a_real_failing_write_is_an_output_error(small_fire, tmp_path):
    """Not a mock: the kernel refuses the write (RLIMIT_FSIZE, EFBIG) in a child process."""
    pair = FireDataset(small_fire)["S01"]
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import resource, signal, sys
        from fire_reg import geometry
        from fire_reg.geometry import transforms
        from fire_reg.io.output import OutputError
        from fire_reg.register.result import Registration, write_files
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        result = Registration(transforms.Affine(geometry.identity()), "ok", "",
                              {pair.size("fixed")}, {pair.size("moving")})
        try:
            write_files({str(tmp_path / "out")!r}, result, {str(pair.fixed_path)!r},
                        {str(pair.moving_path)!r})
        except OutputError as error:
            sys.exit(str(error))
        """)], capture_output=True, text=True)
    assert child.returncode == 1 and "cannot write here: File too large" in child.stderr
    assert list(tmp_path.iterdir()) == []  # no result set, no temporary


def test_a_new_set_replaces_the_older_one_and_nothing_else(small_fire, tmp_path):
    """A failed result replacing an ok one: no warped.png of the older set stays beside it;
    the user's file in the folder stays."""
    pair = FireDataset(small_fire)["S01"]
    out = tmp_path / "S01"
    write_files(out, identity_result(pair.size("fixed")), pair.fixed_path, pair.moving_path)
    assert (out / "warped.png").is_file()
    (out / "my notes.txt").write_text("mine")
    write_files(out, identity_result(pair.size("fixed"), "failed"), pair.fixed_path,
                pair.moving_path)
    assert sorted(path.name for path in out.iterdir()) == [
        "my notes.txt", "overlay.png", "transform.json", "transform.tfm"]
    assert json.loads((out / "transform.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("pictures, files", [
    ("all", ["overlay.png", "transform.json", "transform.tfm", "warped.png"]),
    ("overlay", ["overlay.png", "transform.json", "transform.tfm"]),
    ("none", ["transform.json", "transform.tfm"]),
])
def test_fewer_pictures_keep_the_transform_files_and_read_only_headers(
        pictures, files, small_fire, tmp_path, monkeypatch):
    """Each choice of pictures: its files and no others (a set rewritten into a folder drops
    the pictures of the older one), the same transform.json; without pictures the images
    are read for their headers only."""
    from fire_reg.register import result as result_module

    pair = FireDataset(small_fire)["S01"]
    result = identity_result(pair.size("fixed"))
    out = tmp_path / "S01"
    write_files(tmp_path / "reference", result, pair.fixed_path, pair.moving_path)
    write_files(out, result, pair.fixed_path, pair.moving_path)  # an older set, every picture
    reads = []
    real_decode = result_module.decode

    def recorded(path, *args, **kwargs):
        reads.append(kwargs.get("pixels", True))
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(result_module, "decode", recorded)
    write_files(out, result, pair.fixed_path, pair.moving_path, pictures=pictures)
    assert sorted(path.name for path in out.iterdir()) == files
    assert reads == [pictures != "none"] * 2
    assert (out / "transform.json").read_bytes() == (
        tmp_path / "reference" / "transform.json").read_bytes()
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    with pytest.raises(ValueError, match="pictures must be one of all, overlay, none"):
        write_files(tmp_path / "other", result, pair.fixed_path, pair.moving_path,
                    pictures="some")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("pictures", ["all", "none"])
def test_a_prepared_reference_is_decoded_at_full_size_only_for_pictures(
        pictures, small_fire, tiny_model_path, tmp_path, monkeypatch):
    """A series' prepared fixed image keeps a full-size decode only where a picture needs it
    (a cohort without pictures holds no full-size reference in memory); the same
    transform.json either way."""
    from fire_reg.register.maps import PreparedImage
    from fire_reg.register.registrar import Registrar

    pair = FireDataset(small_fire)["S01"]
    result = identity_result(pair.size("fixed"))
    prepared = Registrar(tiny_model_path).prepare_file(pair.fixed_path)
    full_decodes = []
    real_decoded = PreparedImage.decoded
    monkeypatch.setattr(PreparedImage, "decoded",
                        lambda self: full_decodes.append(self.path) or real_decoded(self))
    write_files(tmp_path / "prepared", result, prepared, pair.moving_path, pictures=pictures)
    write_files(tmp_path / "paths", result, pair.fixed_path, pair.moving_path,
                pictures=pictures)
    assert full_decodes == ([str(pair.fixed_path)] if pictures == "all" else [])
    assert (tmp_path / "prepared" / "transform.json").read_bytes() == (
        tmp_path / "paths" / "transform.json").read_bytes()


def test_atomic_folder_commits_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "set", last="b") as folder:
            (folder / "a").write_text("a")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(tmp_path / "set", last="b") as folder:
        (folder / "a").write_text("a")
        (folder / "b").write_text("b")
        assert not (tmp_path / "set").exists()  # appears only with the rename
    assert sorted(path.name for path in (tmp_path / "set").iterdir()) == ["a", "b"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "set").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    with pytest.raises(InputError, match="not a folder"):
        with atomic_folder(tmp_path / "set" / "a"):
            pass
    assert os.listdir(tmp_path) == ["set"] and not temporaries(tmp_path)
