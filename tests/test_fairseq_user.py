"""A fairseq user's habits and real file trees, through the real ``sew`` command (a subprocess) on
real files: each case gives fairseq's result or a refusal naming the file and line or the option,
never a silent loss or a traceback (issue 20's cases, numbered as there)."""

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_manifest, write_wav_corpus
from helpers import LETTERS, ctc_model, sew_here, sew_script, write_checkpoint

FAIRSEQ_MANIFEST = Path(__import__("fairseq").__file__).parent / "examples" / "wav2vec" / "wav2vec_manifest.py"


def wav(path: Path, n: int = 4000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsdecode(path), np.random.default_rng(n).uniform(-0.3, 0.3, n).astype(np.float32), 16000)
    return path


def rows(tsv: Path):
    lines = tsv.read_text().splitlines()
    return [Path(lines[0]) / line.split("\t")[0] for line in lines[1:]]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny fine-tuned checkpoint and two labelled subsets beside its dictionary: (folder, checkpoint)."""
    folder = tmp_path_factory.mktemp("labelled")
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    for subset, lengths in (("valid", [8000, 12000]), ("test", [10000, 9000, 7000])):
        found = write_wav_corpus(folder / subset, lengths, seed=len(lengths))
        write_manifest(folder / f"{subset}.tsv", folder / subset, found)
        (folder / f"{subset}.ltr").write_text("E T A |\n" * len(found))
    torch.manual_seed(3)
    write_checkpoint(ctc_model("sew"), folder / "ckpt.pt", folder)
    return folder, folder / "ckpt.pt"


# 1. links to folders and files, as fairseq's glob follows them; a dangling link is counted

def test_manifest_over_linked_subsets_lists_what_fairseqs_script_lists(tmp_path):
    for subset, n in (("clean-100", 3), ("clean-360", 2), ("other-500", 2)):
        for i in range(n):
            wav(tmp_path / "LibriSpeech" / subset / f"{subset}-{i}.wav", 2000 + 100 * i)
    train = tmp_path / "train-960"
    train.mkdir()
    for subset in ("clean-100", "clean-360"):
        (train / subset).symlink_to(tmp_path / "LibriSpeech" / subset, target_is_directory=True)
    (train / "one.wav").symlink_to(tmp_path / "LibriSpeech" / "other-500" / "other-500-0.wav")
    fairseq = subprocess.run([sys.executable, str(FAIRSEQ_MANIFEST), str(train), "--dest", str(tmp_path / "fairseq"),
                              "--ext", "wav", "--valid-percent", "0"], capture_output=True, text=True)
    assert fairseq.returncode == 0, fairseq.stderr
    sew_script("manifest", train, "--dest", tmp_path / "sew")
    theirs = sorted((os.path.realpath(p), n) for p, n in zip(rows(tmp_path / "fairseq" / "train.tsv"),
                    [int(l.split("\t")[1]) for l in (tmp_path / "fairseq" / "train.tsv").read_text().splitlines()[1:]]))
    ours = sorted((os.path.realpath(p), n) for p, n in zip(rows(tmp_path / "sew" / "train.tsv"),
                  [int(l.split("\t")[1]) for l in (tmp_path / "sew" / "train.tsv").read_text().splitlines()[1:]]))
    assert len(ours) == 6 and ours == theirs

    (train / "gone.wav").symlink_to(tmp_path / "nowhere.wav")  # fairseq's script stops at it with a traceback
    refused = sew_script("manifest", train, "--dest", tmp_path / "again", expect=2)
    assert f"{train / 'gone.wav'}: a link to nothing" in refused.stderr
    counted = sew_script("manifest", train, "--dest", tmp_path / "again", "--skip-bad")
    assert "7 audio files found; written: train 6; skipped: 1" in counted.stdout


# 2. a rerun into the same --dest leaves nothing of the earlier run to be read with the new files

def test_a_rerun_refuses_stale_outputs_and_overwrite_removes_them(tmp_path):
    for i in range(6):
        wav(tmp_path / "audio" / f"u{i}.wav", 3000 + 10 * i)
    (tmp_path / "t.txt").write_text("".join(f"u{i} THE CAT\n" for i in range(6)))
    data = tmp_path / "data"
    sew_script("manifest", tmp_path / "audio", "--dest", data, "--valid-percent", "0.5")
    sew_script("labels", data / "train.tsv", tmp_path / "t.txt", "--dest", data)
    sew_script("labels", data / "valid.tsv", tmp_path / "t.txt", "--dest", data)

    refused = sew_script("manifest", tmp_path / "audio", "--dest", data, expect=2)
    for name in ("train.tsv", "train.wrd", "train.ltr", "valid.tsv", "valid.ltr"):
        assert str(data / name) in refused.stderr
    assert "--overwrite" in refused.stderr and len(rows(data / "train.tsv")) == 3  # nothing changed

    replaced = sew_script("manifest", tmp_path / "audio", "--dest", data, "--overwrite")
    assert "removed, from an earlier run: " in replaced.stdout
    assert sorted(p.name for p in data.iterdir()) == ["dict.ltr.txt", "train.tsv"]
    assert len(rows(data / "train.tsv")) == 6


def test_manifests_of_other_folders_in_one_dest_are_not_stale(tmp_path):
    for split in ("train", "valid", "test"):
        wav(tmp_path / split / f"{split}.wav")
        sew_script("manifest", tmp_path / split, "--dest", tmp_path / "data", "--split", split)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test.tsv", "train.tsv", "valid.tsv"]
    # a subset of the pre-training folder, as its own split beside the pre-training train/valid
    for i in range(4):
        wav(tmp_path / "all" / "sub" / f"u{i}.wav")
    sew_script("manifest", tmp_path / "all", "--dest", tmp_path / "pre", "--valid-percent", "0.25")
    sew_script("manifest", tmp_path / "all" / "sub", "--dest", tmp_path / "pre", "--split", "train_sub")
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == ["train.tsv", "train_sub.tsv", "valid.tsv"]


def test_labels_rerun_after_skip_bad_starts_from_every_row_and_rebuilds_its_dictionary(tmp_path):
    for i in range(4):
        wav(tmp_path / "audio" / f"u{i}.wav")
    data = tmp_path / "data"
    sew_script("manifest", tmp_path / "audio", "--dest", data)
    (tmp_path / "t.txt").write_text("u0 THE CAT\nu1 THE DOG\nu2 A CAT\n")  # u3 has no transcript
    sew_script("labels", data / "train.tsv", tmp_path / "t.txt", "--dest", data, "--skip-bad")
    assert len(rows(data / "train.tsv")) == 3 and len(rows(data / "train.unfiltered.tsv")) == 4

    (tmp_path / "t.txt").write_text("u0 THE CAT\nu1 THE DOG\nu2 A CAT\nu3 QUIZ\n")  # fixed, with new letters
    refused = sew_script("labels", data / "train.tsv", tmp_path / "t.txt", "--dest", data, expect=2)
    assert "already exist (the labels of an earlier run)" in refused.stderr
    done = sew_script("labels", data / "train.tsv", tmp_path / "t.txt", "--dest", data, "--overwrite")
    assert "4 utterances in, 4 labelled out" in done.stdout and "rebuilt" in done.stdout
    assert "before an earlier --skip-bad" in done.stdout
    assert len(rows(data / "train.tsv")) == 4 and not (data / "train.unfiltered.tsv").exists()
    assert not (data / "train.skipped.tsv").exists() and "Q 1" in (data / "dict.ltr.txt").read_text()


def test_hidden_files_are_left_out_as_fairseqs_glob_leaves_them_and_counted(tmp_path):
    wav(tmp_path / "audio" / "a.wav")
    (tmp_path / "audio" / "._a.wav").write_bytes(b"\x00\x05\x16\x07")  # macOS's AppleDouble copy
    wav(tmp_path / "audio" / ".Trash" / "old.wav")
    done = sew_script("manifest", tmp_path / "audio", "--dest", tmp_path / "d")
    assert "1 audio files found; written: train 1; skipped: 0; 2 hidden files or folders left out" in done.stdout
    fairseq = subprocess.run([sys.executable, str(FAIRSEQ_MANIFEST), str(tmp_path / "audio"), "--dest",
                              str(tmp_path / "f"), "--ext", "wav", "--valid-percent", "0"], capture_output=True, text=True)
    assert fairseq.returncode == 0 and len((tmp_path / "f" / "train.tsv").read_text().splitlines()) == 2


# 3. --valid-percent is fairseq's fraction

def test_valid_percent_is_a_fraction_and_a_percent_is_refused_with_the_hint(tmp_path):
    for i in range(10):
        wav(tmp_path / "audio" / f"u{i}.wav")
    done = sew_script("manifest", tmp_path / "audio", "--dest", tmp_path / "d", "--valid-percent", "0.2")
    assert "written: train 8, valid 2" in done.stdout
    refused = sew_script("manifest", tmp_path / "audio", "--dest", tmp_path / "e", "--valid-percent", "2", expect=2)
    assert "sew manifest: error: --valid-percent 2: a fraction in [0, 1), as in fairseq (for 2% write 0.02)" in refused.stderr


# 4. labels named after a manifest elsewhere never replace the labels of DEST's own manifest

def test_labelling_another_folders_manifest_into_dest_refuses_to_mix_them(tmp_path):
    for i in range(6):
        wav(tmp_path / "audio" / f"u{i}.wav")
    (tmp_path / "t.txt").write_text("".join(f"u{i} THE CAT\n" for i in range(6)))
    data = tmp_path / "data"
    sew_script("manifest", tmp_path / "audio", "--dest", data)
    sew_script("labels", data / "train.tsv", tmp_path / "t.txt", "--dest", data)
    lines = (data / "train.ltr").read_text()
    scratch = tmp_path / "scratch" / "train.tsv"
    scratch.parent.mkdir()
    scratch.write_text("\n".join((data / "train.tsv").read_text().splitlines()[:3]) + "\n")

    refused = sew_script("labels", scratch, tmp_path / "t.txt", "--dest", data, expect=2)
    assert f"{data / 'train.tsv'}, {data / 'train.wrd'}, {data / 'train.ltr'} already exist" in refused.stderr
    assert (data / "train.ltr").read_text() == lines

    sew_script("labels", scratch, tmp_path / "t.txt", "--dest", tmp_path / "elsewhere")  # DEST gets the manifest too
    assert (tmp_path / "elsewhere" / "train.tsv").read_text() == scratch.read_text()
    assert len((tmp_path / "elsewhere" / "train.ltr").read_text().splitlines()) == 2


# 5. results are named as fairseq's infer.py names them, one set per checkpoint and subset

@pytest.mark.slow
def test_results_of_two_subsets_sit_side_by_side_and_a_rerun_is_explicit(tmp_path, labelled):
    folder, ckpt = labelled
    results = tmp_path / "results"
    sew_script("infer", ckpt, folder / "valid.tsv", "--results-path", results, "--w2l-decoder", "viterbi",
        "--post-process", "letter")
    sew_script("infer", ckpt, folder / "test.tsv", "--results-dir", results)
    for subset, n in (("valid", 2), ("test", 3)):
        for kind in ("hypo.word", "hypo.units", "ref.word", "ref.units"):
            lines = (results / f"{kind}-ckpt.pt-{subset}.txt").read_text().splitlines()
            assert [line.rsplit(" ", 1)[-1] for line in lines] == [f"(None-{i})" for i in range(n)]
        assert (results / f"ref.word-ckpt.pt-{subset}.txt").read_text().startswith("ETA (None-0)\n")
        summary = json.loads((results / f"summary-ckpt.pt-{subset}.json").read_text())
        assert summary["utterances_transcribed"] == n
    units = (results / "hypo.units-ckpt.pt-test.txt").read_text().splitlines()
    words = (results / "hypo.word-ckpt.pt-test.txt").read_text().splitlines()
    for unit, word in zip(units, words):  # units are the dictionary's symbols, as fairseq writes them
        assert unit.rsplit(" ", 1)[0].replace(" ", "").replace("|", " ").split() == word.rsplit(" ", 1)[0].split()
    refused = sew_script("infer", ckpt, folder / "test.tsv", "--results-dir", results, expect=2)
    assert f"{results / 'hypo.word-ckpt.pt-test.txt'}" in refused.stderr and "--overwrite" in refused.stderr

    unlabelled = tmp_path / "unlabelled"  # the same subset without references: the earlier ref files go
    unlabelled.mkdir()
    for name in ("test.tsv", "dict.ltr.txt"):
        (unlabelled / name).write_text((folder / name).read_text())
    sew_script("infer", ckpt, unlabelled / "test.tsv", "--results-dir", results, "--overwrite")
    assert not (results / "ref.word-ckpt.pt-test.txt").exists() and (results / "hypo.word-ckpt.pt-test.txt").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--gen-subset", "dev_other", "sew infer takes the manifest itself: pass DATA/dev_other.tsv"),
    ("--path", "ckpt.pt", "sew infer takes the checkpoint as its first argument"),
    ("--task", "audio_finetuning", "sew infer takes the task from the checkpoint"),
])
def test_fairseqs_options_without_an_equivalent_are_refused_naming_the_way_here(tmp_path, option, value,
                                                                              message):
    run = sew_script if option == "--gen-subset" else sew_here
    assert "--overwrite replaces the files of --results-dir" in sew_here("infer", tmp_path / "c.pt", tmp_path,
                                                                          "--overwrite", expect=2).stderr
    refused = run("infer", tmp_path / "ckpt.pt", tmp_path, option, value, expect=2)
    assert f"argument {option}: {message}" in refused.stderr


# 6. references in letters the model does not have, or a byte-order mark fairseq would read as a letter

@pytest.mark.slow
@pytest.mark.parametrize("labels, line, message", [
    ("E T A |\ne t a |\n", 2, "letters ['a', 'e', 't'] are not in the model's dictionary"),
    ("\ufeffE T A |\nE T |\n", 1, "starts with a UTF-8 byte-order mark"),
])
def test_references_outside_the_dictionary_are_refused_by_line(tmp_path, labelled, labels, line, message):
    folder, ckpt = labelled
    data = tmp_path / "data"
    data.mkdir()
    (data / "dict.ltr.txt").write_text((folder / "dict.ltr.txt").read_text())
    (data / "valid.tsv").write_text((folder / "valid.tsv").read_text())
    (data / "valid.ltr").write_text(labels, encoding="utf-8")
    refused = sew_script("infer", ckpt, data / "valid.tsv", expect=2)
    assert f"{data / 'valid.ltr'}:{line}: {message}" in refused.stderr


# 7 is tests/test_audio_containers.py; 8 is tests/test_recipe_schedule.py; 9 is tests/test_ngram.py.

# 10. --skip-bad with nothing good left

def test_skip_bad_with_every_file_bad_writes_nothing(tmp_path):
    wav(tmp_path / "audio" / "short.wav", 100)
    sf.write(tmp_path / "audio" / "stereo.wav", np.zeros((4000, 2), np.float32), 16000)
    refused = sew_script("manifest", tmp_path / "audio", "--dest", tmp_path / "d", "--skip-bad", expect=2)
    assert "2 bad audio files" in refused.stderr and "none is left: fix them" in refused.stderr
    assert not (tmp_path / "d" / "train.tsv").exists()


# 11. output locations are checked before any work

def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write into (as root, chmod does not stop it: sysfs does)."""
    if os.geteuid() == 0:
        return Path("/sys/sew-test")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


@pytest.mark.parametrize("where", ["file", "under-file", "unwritable"])
@pytest.mark.parametrize("command", ["manifest", "labels", "lexicon", "lm"])
def test_a_dest_that_cannot_be_written_is_refused_by_name(tmp_path, command, where):
    wav(tmp_path / "audio" / "u0.wav")
    write_manifest(tmp_path / "train.tsv", tmp_path / "audio", [("u0.wav", 4000)])
    (tmp_path / "t.txt").write_text("u0 THE CAT\n")
    (tmp_path / "a-file").write_text("")
    dest = {"file": tmp_path / "a-file", "under-file": tmp_path / "a-file" / "sub",
            "unwritable": unwritable(tmp_path)}[where]
    if command in ("lexicon", "lm") and where != "file":
        dest = dest / "out.txt"
    inputs = {"manifest": [tmp_path / "audio"], "labels": [tmp_path / "train.tsv", tmp_path / "t.txt"],
              "lexicon": [tmp_path / "t.txt"], "lm": [tmp_path / "t.txt"]}[command]
    run = sew_script if (command, where) == ("manifest", "file") else sew_here
    refused = run(command, *inputs, "--dest", dest, expect=2)
    assert refused.stderr.startswith(f"sew {command}: error: ") and str(dest if command in ("manifest", "labels") or
                                                                          where == "file" else dest.parent) in refused.stderr


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_a_results_dir_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, where):
    wav(tmp_path / "audio" / "u0.wav")
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", [("u0.wav", 4000)])
    (tmp_path / "a-file").write_text("")
    results = tmp_path / "a-file" if where == "file" else unwritable(tmp_path)
    refused = sew_script("infer", tmp_path / "no-such-checkpoint.pt", tmp_path / "valid.tsv", "--results-dir", results,
                  expect=2)
    assert f"sew infer: error: {results}: --results-dir" in refused.stderr  # not the checkpoint: nothing loaded


# 12. file names that are not UTF-8 or hold line breaks are named, escaped, and counted

def test_undecodable_and_control_character_names_are_escaped_and_counted(tmp_path):
    audio = tmp_path / "audio"
    wav(audio / "good.wav")
    os.rename(wav(audio / "latin.wav"), os.fsencode(audio) + b"/caf\xe9.wav")  # Latin-1 bytes
    wav(audio / "line\rbreak.wav")
    refused = sew_script("manifest", audio, "--dest", tmp_path / "d", expect=2)
    assert "caf\\xe9.wav: the file name is not UTF-8" in refused.stderr
    assert "line\\rbreak.wav: a tab or line break" in refused.stderr and "\r" not in refused.stderr
    skipped = sew_script("manifest", audio, "--dest", tmp_path / "d", "--skip-bad")
    assert "3 audio files found; written: train 1; skipped: 2" in skipped.stdout
    listed = (tmp_path / "d" / "train.skipped_audio.tsv").read_text(encoding="utf-8").splitlines()
    assert len(listed) == 2 and all(len(line.split("\t")) == 2 for line in listed)


# 13. a device this torch cannot use stops at the command line

@pytest.mark.parametrize("device, message", [("gpu", "must be cpu, cuda or cuda:N, got 'gpu'"),
                                             ("cuda", "sees no CUDA device")])
def test_infer_on_a_device_torch_lacks_is_refused_by_option(tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused = sew_script("infer", tmp_path / "ckpt.pt", tmp_path / "valid.tsv", "--device", device, expect=2)
    assert "sew infer: error: argument --device: " in refused.stderr and message in refused.stderr


# 14. what fairseq strips or keeps differently: a byte-order mark, leading blanks, a root ending in a blank

def test_manifest_starting_with_a_byte_order_mark_is_refused_by_line(tmp_path):
    wav(tmp_path / "audio" / "u0.wav")
    (tmp_path / "valid.tsv").write_text(f"\ufeff{tmp_path / 'audio'}\nu0.wav\t4000\n", encoding="utf-8")
    refused = sew_script("infer", tmp_path / "ckpt.pt", tmp_path / "valid.tsv", expect=2)
    assert f"{tmp_path / 'valid.tsv'}:1: starts with a UTF-8 byte-order mark, which fairseq reads as part of the " \
           "first path" in refused.stderr


def test_blanks_fairseq_would_strip_are_refused(tmp_path):
    wav(tmp_path / "audio" / " lead.wav")
    wav(tmp_path / "audio" / "fine.wav")
    refused = sew_script("manifest", tmp_path / "audio", "--dest", tmp_path / "d", expect=2)
    assert f"{tmp_path / 'audio' / ' lead.wav'}: the path begins with a blank, which fairseq strips" in refused.stderr
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", [(" lead.wav", 4000)])
    refused = sew_script("infer", tmp_path / "ckpt.pt", tmp_path / "valid.tsv", expect=2)
    assert f"{tmp_path / 'valid.tsv'}:2: the path ' lead.wav' begins with a blank" in refused.stderr

    wav(tmp_path / "twin " / "u.wav")
    refused = sew_script("manifest", tmp_path / "twin ", "--dest", tmp_path / "e", expect=2)
    assert "the directory name ends in a blank, which fairseq strips" in refused.stderr


# 15. split names stay in DEST; IDs keep their dots; composed and decomposed names match

@pytest.mark.parametrize("split", ["../x", "", ".hidden", "a/b", "test.tsv", "dev,test"])
def test_a_split_that_is_not_a_plain_name_is_refused(tmp_path, split):
    wav(tmp_path / "audio" / "u0.wav")
    run = sew_script if split == "../x" else sew_here
    refused = run("manifest", tmp_path / "audio", "--dest", tmp_path / "d", "--split", split, expect=2)
    assert "sew manifest: error: --split " in refused.stderr and "expected a plain name" in refused.stderr
    assert not (tmp_path / "x.tsv").exists() and not list((tmp_path / "d").glob("*.tsv"))


def test_ids_with_dots_and_decomposed_names_find_their_transcripts(tmp_path):
    decomposed = unicodedata.normalize("NFD", "é")
    wav(tmp_path / "audio" / "spk.utt.1.wav")
    wav(tmp_path / "audio" / f"caf{decomposed}.wav", 3000)
    (tmp_path / "t.txt").write_text("spk.utt.1 THE CAT\ncaf\u00e9 A DOG\n", encoding="utf-8")
    sew_script("manifest", tmp_path / "audio", "--dest", tmp_path / "d")
    done = sew_script("labels", tmp_path / "d" / "train.tsv", tmp_path / "t.txt", "--dest", tmp_path / "d", "--upper")
    assert "2 utterances in, 2 labelled out, 0 skipped" in done.stdout
    assert (tmp_path / "d" / "train.wrd").read_text().splitlines() == ["A DOG", "THE CAT"]
