import pytest

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
