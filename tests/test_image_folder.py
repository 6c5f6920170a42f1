import json
import os
import subprocess
import sys

import pytest

from dpt_t2i.io import image_folder
from dpt_t2i.io.folder_writer import open_folder, output_lock
from dpt_t2i.io.image_folder import (INDEX, check_output_folder, publish, read_index,
                                     staging_folder, write_index)


def _stage_run(stage, names):
    for name in names:
        (stage / name).write_bytes(name.encode())
    write_index(stage, [{"file": n} for n in names])


def test_new_folder_is_one_rename(tmp_path):
    out = check_output_folder(tmp_path / "a" / "b", ["0.png"])
    with staging_folder(out) as stage:
        _stage_run(stage, ["0.png"])
        publish(stage, out)
    assert sorted(p.name for p in out.iterdir()) == ["0.png", INDEX]
    assert read_index(out) == [{"file": "0.png"}]
    assert [p.name for p in out.parent.iterdir()] == ["b"]  # staging folder gone


def test_existing_folder_keeps_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = check_output_folder(tmp_path, ["0.png"])
    with staging_folder(out) as stage:
        _stage_run(stage, ["0.png"])
        publish(stage, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", INDEX, "notes.txt"]


def test_clashing_file_needs_overwrite(tmp_path):
    (tmp_path / "0.png").write_text("old")
    with pytest.raises(ValueError, match="already has 0.png"):
        check_output_folder(tmp_path, ["0.png"])
    assert check_output_folder(tmp_path, ["0.png"], overwrite=True) == tmp_path.resolve()


def test_overwrite_removes_only_what_the_old_index_names(tmp_path):
    _stage_run(tmp_path, ["0.png", "1.png"])
    (tmp_path / "notes.txt").write_text("mine")
    with staging_folder(tmp_path) as stage:
        _stage_run(stage, ["0.png"])
        publish(stage, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", INDEX, "notes.txt"]


def test_publish_refuses_an_unfinished_stage(tmp_path):
    with staging_folder(tmp_path / "out") as stage, pytest.raises(ValueError, match=INDEX):
        publish(stage, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- one writer, resumable


def _records(n):
    return [{"file": f"{k:05d}.png", "seed": k} for k in range(n)]


def _make(folder, batch):
    """What a run's render does for a batch: its PNGs, then its index lines."""
    for record in batch:
        (folder.stage / record["file"]).write_bytes(f"image {record['seed']}".encode())
    folder.add(batch)


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_lock_refuses_a_second_writer_and_goes_with_its_holder(tmp_path):
    out = tmp_path / "new" / "out"
    with output_lock(out):
        assert (tmp_path / "new" / ".out.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(ValueError, match=rf"out is being written by another run "
                                             rf"\(pid {os.getpid()}\)"):
            with output_lock(out):
                pass
    assert list(tmp_path.iterdir()) == []  # lock file and the parent made for it gone
    with output_lock(out):  # free again
        pass


def test_an_interrupted_run_resumes_from_its_last_whole_batch(tmp_path):
    out, records = tmp_path / "out", _records(5)
    with open_folder(out, records, batch_size=2) as folder:
        assert folder.start(records) == records
        _make(folder, records[0:2])
        (folder.stage / "00002.png").write_bytes(b"half")  # a PNG the index does not name
        with (folder.stage / INDEX).open("a") as f:  # and a line torn by the kill
            f.write('{"file": "00002.png", "se')
    stage = tmp_path / ".out.partial"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".out.partial"]
    with pytest.raises(ValueError, match=r"has an unfinished run \(2 of 5 images made.*"
                                         r"pass --resume to finish it, or --overwrite"):
        with open_folder(out, records, batch_size=2):
            pass
    with pytest.raises(ValueError, match=r"--batch-size 2 then, 3 now"):
        with open_folder(out, records, batch_size=3, resume=True):
            pass
    with pytest.raises(ValueError, match=r"00001.png: seed 1 then, 7 now"):
        changed = [*records[:1], {"file": "00001.png", "seed": 7}, *records[2:]]
        with open_folder(out, changed, batch_size=2, resume=True):
            pass
    with open_folder(out, records, batch_size=2, resume=True) as folder:
        todo = folder.start(records)
        assert todo == records[2:]
        assert (stage / INDEX).read_text() == "".join(json.dumps(r) + "\n" for r in records[:2])
        for start in range(0, len(todo), 2):
            _make(folder, todo[start:start + 2])
        folder.finish()
    assert read_index(out) == records
    assert _files(out)["00002.png"] == b"image 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_batch_cut_short_is_made_again_whole(tmp_path):
    out, records = tmp_path / "out", _records(6)
    with open_folder(out, records, batch_size=3) as folder:
        folder.start(records)
        _make(folder, records[:3])
        _make(folder, records[3:4])  # one line of the second batch only
    with open_folder(out, records, batch_size=3, resume=True) as folder:
        assert folder.start(records) == records[3:]


def test_an_unfinished_run_without_images_is_started_over(tmp_path):
    out, records = tmp_path / "out", _records(2)
    with pytest.raises(KeyboardInterrupt):
        with open_folder(out, records, batch_size=1) as folder:
            folder.start(records)
            (folder.stage / "00000.png").write_bytes(b"unindexed")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # nothing to resume: nothing kept


def test_resume_without_an_unfinished_run(tmp_path):
    out, records = tmp_path / "out", _records(2)
    with open_folder(out, records, batch_size=2, resume=True) as folder:  # a new run
        _make(folder, folder.start(records))
        folder.finish()
    before = _files(out)
    with open_folder(out, records, batch_size=2, resume=True) as folder:  # done already
        assert folder.start(records) == []
        folder.finish()
    assert _files(out) == before
    with pytest.raises(ValueError, match="already holds a run"):
        with open_folder(out, _records(3), batch_size=2, resume=True):
            pass
    with pytest.raises(ValueError, match="--resume keeps .* --overwrite discards"):
        with open_folder(out, records, batch_size=2, resume=True, overwrite=True):
            pass


def test_overwrite_discards_an_unfinished_run(tmp_path):
    out, records = tmp_path / "out", _records(4)
    with open_folder(out, records, batch_size=2) as folder:
        folder.start(records)
        _make(folder, records[:2])
    with open_folder(out, records[:1], batch_size=1, overwrite=True) as folder:
        assert folder.start(records[:1]) == records[:1]
        assert sorted(_files(folder.stage)) == [INDEX, "plan.json"]  # the old one's gone
        assert (folder.stage / INDEX).read_bytes() == b""
        _make(folder, records[:1])
        folder.finish()
    assert read_index(out) == records[:1] and sorted(_files(out)) == ["00000.png", INDEX]


def test_an_interrupted_publication_is_finished_by_resume(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _stage_run(out, ["00000.png", "00001.png", "00002.png"])  # the earlier run, replaced
    (out / "notes.txt").write_text("mine")
    records = _records(2)
    moves = []

    def dies_on_the_second_image(src, dst, _replace=os.replace):
        if str(src).endswith(".png"):
            moves.append(src)
            if len(moves) == 2:
                raise KeyboardInterrupt  # killed half-way through the moves
        _replace(src, dst)

    with pytest.raises(KeyboardInterrupt):
        with open_folder(out, records, batch_size=2, overwrite=True) as folder:
            _make(folder, folder.start(records))
            monkeypatch.setattr(image_folder.os, "replace", dies_on_the_second_image)
            folder.finish()
    monkeypatch.undo()
    assert not (out / INDEX).exists()  # the old index went first: none names a missing file
    assert sorted(_files(out)) == ["00000.png", "00001.png", "notes.txt"]  # old 00002 gone
    assert _files(out)["00000.png"] == b"image 0" and _files(out)["00001.png"] == b"00001.png"
    with open_folder(out, records, batch_size=2, resume=True) as folder:
        assert folder.start(records) == []
        folder.finish()
    assert read_index(out) == records
    assert _files(out) == {"00000.png": b"image 0", "00001.png": b"image 1",
                           "notes.txt": b"mine", INDEX: _files(out)[INDEX]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_staging_of_a_dead_process_is_removed_and_a_live_ones_kept(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now a dead process's
    dead = tmp_path / f".out.partial-{child.pid}-0123abcd"
    live = tmp_path / f".out.partial-{os.getpid()}-feedbeef"
    for stage in (dead, live):
        stage.mkdir()
        (stage / "00000.png").write_bytes(b"x")
    with staging_folder(tmp_path / "out"):
        pass
    assert not dead.exists() and (live / "00000.png").exists()
