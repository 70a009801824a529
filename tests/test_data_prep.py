"""`sew manifest`, `sew labels`, `sew lexicon` on real WAV/FLAC files: exact outputs and bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import write_wav_corpus
from sew_plugin.cli import main as sew
from sew_plugin.data.errors import DataError, DataErrors
from sew_plugin.data.labels import write_labels
from sew_plugin.data.manifest import read_manifest, write_manifests

SEW = str(Path(sys.executable).with_name("sew"))


def wav(path: Path, samples: int, rate=16000, channels=1, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(samples).uniform(-0.5, 0.5, (samples, channels) if channels > 1 else samples)
    sf.write(path, data.astype(np.float32), rate, format=fmt)
    return path


@pytest.fixture
def corpus(tmp_path):
    """Six utterances in nested folders, with LibriSpeech-style transcripts."""
    root = tmp_path / "audio"
    sizes = {"a/x1": 16000, "a/x2": 8000, "b/c/y1": 12345, "b/y2": 4000, "z1": 20000, "z2": 9999}
    for name, n in sizes.items():
        wav(root / f"{name}.wav", n)
    (root / "a" / "a.trans.txt").write_text("x1 HELLO WORLD\nx2 HI\n")
    (root / "b" / "b.trans.txt").write_text("y1 WORLD LOW HELLO\ny2   HI   HI\n")
    (root / "top.trans.txt").write_text("z1 OH HI\nz2 LOW\n")
    return root, sizes


def test_manifest_lists_every_file_sorted_with_sample_counts(corpus, tmp_path, capsys):
    root, sizes = corpus
    assert sew(["manifest", str(root), "--dest", str(tmp_path / "data")]) == 0
    expected = f"{root}\n" + "".join(f"{name}.wav\t{sizes[name]}\n" for name in sorted(sizes))
    assert (tmp_path / "data" / "train.tsv").read_text() == expected
    assert not (tmp_path / "data" / "valid.tsv").exists()
    assert "6 audio files found; written: train 6; skipped: 0" in capsys.readouterr().out


def test_manifest_split_is_deterministic_disjoint_and_complete(corpus, tmp_path):
    root, sizes = corpus
    splits = {}
    for run, seed in (("a", 1), ("b", 1), ("c", 7)):
        write_manifests(root, tmp_path / run, valid_fraction=0.34, seed=seed)
        train = read_manifest(tmp_path / run / "train.tsv").entries
        valid = read_manifest(tmp_path / run / "valid.tsv").entries
        assert len(valid) == 2 and len(train) == 4  # round(6 * 0.34)
        assert sorted(train + valid) == sorted((f"{n}.wav", s) for n, s in sizes.items())
        assert train == sorted(train) and valid == sorted(valid)
        splits[run] = valid
    assert splits["a"] == splits["b"]
    assert splits["a"] != splits["c"]


def test_manifest_finds_flac(tmp_path):
    wav(tmp_path / "audio" / "u.flac", 3000, fmt="FLAC")
    wav(tmp_path / "audio" / "v.wav", 3000)
    write_manifests(tmp_path / "audio", tmp_path / "data", ext="flac")
    assert read_manifest(tmp_path / "data" / "train.tsv").entries == [("u.flac", 3000)]


def bad_audio_cases(root: Path):
    wav(root / "good.wav", 4000)
    wav(root / "narrowband.wav", 4000, rate=8000)
    wav(root / "stereo.wav", 4000, channels=2)
    wav(root / "empty.wav", 0)
    (root / "garbage.wav").write_bytes(b"RIFF not really a wave file")
    return {
        "narrowband.wav": "sample rate 8000 Hz, expected 16000 Hz",
        "stereo.wav": "2 channels, expected mono",
        "empty.wav": "zero-length audio",
        "garbage.wav": "unreadable audio",
    }


def test_manifest_refuses_bad_audio_naming_each_file(tmp_path):
    expected = bad_audio_cases(tmp_path / "audio")
    with pytest.raises(DataErrors) as info:
        write_manifests(tmp_path / "audio", tmp_path / "data")
    assert len(info.value.errors) == len(expected)
    for name, reason in expected.items():
        assert any(e.where.endswith(name) and reason in e.message for e in info.value.errors), name
    assert not (tmp_path / "data" / "train.tsv").exists()


def test_manifest_skip_bad_leaves_them_out_and_lists_them(tmp_path, capsys):
    expected = bad_audio_cases(tmp_path / "audio")
    assert sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "data"), "--skip-bad"]) == 0
    assert read_manifest(tmp_path / "data" / "train.tsv").entries == [("good.wav", 4000)]
    skipped = (tmp_path / "data" / "train.skipped_audio.tsv").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in skipped) == sorted(expected)
    captured = capsys.readouterr()
    assert "5 audio files found; written: train 1; skipped: 4" in captured.out
    assert captured.err.count("skipped ") == 4


def test_manifest_split_names_a_held_out_manifest_beside_train(tmp_path):
    rows = write_wav_corpus(tmp_path / "test_audio", [4000, 5000])
    write_wav_corpus(tmp_path / "train_audio", [6000])
    assert sew(["manifest", str(tmp_path / "train_audio"), "--dest", str(tmp_path / "data")]) == 0
    assert sew(["manifest", str(tmp_path / "test_audio"), "--dest", str(tmp_path / "data"), "--split", "test"]) == 0
    assert read_manifest(tmp_path / "data" / "test.tsv").entries == rows
    assert len(read_manifest(tmp_path / "data" / "train.tsv").entries) == 1  # left as it was


def test_manifest_of_an_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "audio").mkdir()
    assert sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "data")]) == 2
    assert "no .wav files found" in capsys.readouterr().err


def test_labels_write_aligned_words_letters_and_dictionary(corpus, tmp_path):
    root, _ = corpus
    data = tmp_path / "data"
    write_manifests(root, data)
    report = write_labels(data / "train.tsv", [root], data)
    assert (report.utterances, report.labelled, report.transcripts_read) == (6, 6, 6)
    # manifest order: a/x1 a/x2 b/c/y1 b/y2 z1 z2
    assert (data / "train.wrd").read_text() == "HELLO WORLD\nHI\nWORLD LOW HELLO\nHI HI\nOH HI\nLOW\n"
    assert (data / "train.ltr").read_text() == (
        "H E L L O | W O R L D |\nH I |\nW O R L D | L O W | H E L L O |\nH I | H I |\nO H | H I |\nL O W |\n"
    )
    assert (data / "dict.ltr.txt").read_text() == "| 11\nL 8\nH 7\nO 7\nI 4\nW 4\nD 2\nE 2\nR 2\n"


def test_labels_for_a_second_split_are_checked_against_the_existing_dictionary(corpus, tmp_path):
    root, _ = corpus
    data = tmp_path / "data"
    write_manifests(root, data, valid_fraction=0.34, seed=1)
    write_labels(data / "train.tsv", [root], data)
    dictionary = (data / "dict.ltr.txt").read_text()
    valid_ids = [Path(p).stem for p, _ in read_manifest(data / "valid.tsv").entries]
    (root / "extra.trans.txt").write_text("")  # transcripts may be spread over files
    report = write_labels(data / "valid.tsv", [root], data)
    assert report.labelled == 2 and report.other_split_transcripts == 4
    assert "checked against" in report.dictionary
    assert (data / "dict.ltr.txt").read_text() == dictionary
    assert len((data / "valid.ltr").read_text().splitlines()) == len(valid_ids)


def test_labels_from_a_tsv(tmp_path):
    wav(tmp_path / "audio" / "u1.wav", 1000)
    wav(tmp_path / "audio" / "u2.wav", 1000)
    write_manifests(tmp_path / "audio", tmp_path / "data")
    (tmp_path / "t.tsv").write_text("u2.wav\tsecond one\nsub/u1.flac\tfirst\n")
    write_labels(tmp_path / "data" / "train.tsv", [tmp_path / "t.tsv"], tmp_path / "data", upper=True)
    assert (tmp_path / "data" / "train.wrd").read_text() == "FIRST\nSECOND ONE\n"


def manifest_and_labels(tmp_path, transcripts: str, names=("u1", "u2", "u3")):
    for name in names:
        wav(tmp_path / "audio" / f"{name}.wav", 2000)
    write_manifests(tmp_path / "audio", tmp_path / "data")
    (tmp_path / "t.txt").write_text(transcripts)
    return tmp_path / "data" / "train.tsv", tmp_path / "t.txt"


def test_utterance_without_transcript_names_the_manifest_line(tmp_path):
    manifest, transcripts = manifest_and_labels(tmp_path, "u1 A B\nu3 C\n")
    with pytest.raises(DataErrors) as info:
        write_labels(manifest, [transcripts], tmp_path / "data")
    assert [str(e) for e in info.value.errors] == [f"{manifest}:3: no transcript for utterance u2"]
    assert not (tmp_path / "data" / "train.ltr").exists()


def test_transcript_without_audio_names_the_transcript_line(tmp_path):
    manifest, transcripts = manifest_and_labels(tmp_path, "u1 A\nu2 B\nghost C\nu3 D\n")
    with pytest.raises(DataErrors) as info:
        write_labels(manifest, [transcripts], tmp_path / "data")
    assert [e.where for e in info.value.errors] == [f"{transcripts}:3"]
    assert "ghost has no audio file" in info.value.errors[0].message


def test_characters_outside_the_dictionary_name_the_transcript_line(tmp_path):
    manifest, transcripts = manifest_and_labels(tmp_path, "u1 AB\nu2 BA\nu3 AXE\n")
    (tmp_path / "dict.ltr.txt").write_text("| 3\nA 3\nB 2\n")
    with pytest.raises(DataErrors) as info:
        write_labels(manifest, [transcripts], tmp_path / "data", dictionary=tmp_path / "dict.ltr.txt")
    assert str(info.value.errors[0]) == f"{transcripts}:3: characters ['E', 'X'] of u3 are not in {tmp_path / 'dict.ltr.txt'}"


def test_a_dictionary_built_from_a_split_other_than_train_is_named(tmp_path, capsys):
    manifest, transcripts = manifest_and_labels(tmp_path, "u1 AB\nu2 BA\nu3 AXE\n")
    data, dictionary = tmp_path / "data", tmp_path / "data" / "dict.ltr.txt"
    valid = data / "valid.tsv"
    valid.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:3]))  # root, u1, u2
    labels = ["labels", str(manifest), str(transcripts), "--dest", str(data)]

    assert sew(["labels", str(valid), str(transcripts), "--dest", str(data)]) == 0
    captured = capsys.readouterr()
    assert f"built {dictionary} from valid" in captured.out
    assert f"sew labels: warning: {dictionary} is built from valid, but fine-tuning needs it built from the " \
           "training split" in captured.err and "delete it and label train first" in captured.err
    assert sew(labels) == 2
    err = capsys.readouterr().err
    assert f"characters ['E', 'X'] of u3 are not in {dictionary} (built from valid)" in err
    assert f"{dictionary} was built from valid: delete it and label train first, or fix them" in err

    dictionary.write_text("| 4\nA 3\nB 2\n")  # from no split beside it
    assert sew(labels) == 2
    assert f"are not in {dictionary} (built from another split?)" in capsys.readouterr().err
    dictionary.unlink()
    assert sew(labels) == 0
    captured = capsys.readouterr()
    assert f"built {dictionary} from train" in captured.out and "warning" not in captured.err


@pytest.mark.parametrize(
    "text, message",
    [("u1 A\nu1 B\n", "utterance u1 is already transcribed at"), ("u1\n", "expected an utterance ID"), ("u1 A|B\n", "word-boundary")],
)
def test_malformed_transcripts_name_file_and_line(tmp_path, text, message):
    manifest, transcripts = manifest_and_labels(tmp_path, text, names=("u1",))
    with pytest.raises(DataError, match=message) as info:
        write_labels(manifest, [transcripts], tmp_path / "data")
    assert info.value.where.startswith(f"{transcripts}:")


def test_labels_skip_bad_rewrites_the_manifest_and_lists_what_was_left_out(tmp_path, capsys):
    manifest, transcripts = manifest_and_labels(tmp_path, "u1 A B\nu3 C\n")
    original = manifest.read_text()
    assert sew(["labels", str(manifest), str(transcripts), "--dest", str(tmp_path / "data"), "--skip-bad"]) == 0
    data = tmp_path / "data"
    assert [p for p, _ in read_manifest(data / "train.tsv").entries] == ["u1.wav", "u3.wav"]
    assert (data / "train.unfiltered.tsv").read_text() == original
    assert (data / "train.wrd").read_text() == "A B\nC\n"
    assert "no transcript for utterance u2" in (data / "train.skipped.tsv").read_text()
    assert "3 utterances in, 2 labelled out, 1 skipped" in capsys.readouterr().out


def test_manifest_with_malformed_rows_names_the_line(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("/audio\nu1.wav\t100\nu2.wav 100\n")
    with pytest.raises(DataError, match=r"train.tsv:3: expected 'relative/path<TAB>num_samples'"):
        read_manifest(bad)


def test_lexicon_spells_every_distinct_word(tmp_path, capsys):
    (tmp_path / "a.wrd").write_text("THE CAT\nTHE DOG\n")
    (tmp_path / "words.txt").write_text("BIRD\n")
    assert sew(["lexicon", str(tmp_path / "a.wrd"), str(tmp_path / "words.txt"), "--dest", str(tmp_path / "lex.txt")]) == 0
    assert (tmp_path / "lex.txt").read_text() == "BIRD B I R D |\nCAT C A T |\nDOG D O G |\nTHE T H E |\n"
    assert "4 words written" in capsys.readouterr().out


def test_lexicon_refuses_letters_outside_the_dictionary(tmp_path, capsys):
    (tmp_path / "a.wrd").write_text("CAT\nCAB\n")
    (tmp_path / "dict.ltr.txt").write_text("| 2\nC 2\nA 2\nT 1\n")
    argv = ["lexicon", str(tmp_path / "a.wrd"), "--dest", str(tmp_path / "l.txt"), "--dict", str(tmp_path / "dict.ltr.txt")]
    assert sew(argv) == 2
    assert "a.wrd:2: word 'CAB' has characters ['B'] not in" in capsys.readouterr().err
    assert not (tmp_path / "l.txt").exists()


def test_console_script_reports_bad_input_without_a_traceback(tmp_path):
    bad_audio_cases(tmp_path / "audio")
    run = subprocess.run([SEW, "manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "d")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "sew manifest: error: 4 bad audio files" in run.stderr and "Traceback" not in run.stderr
    assert "stereo.wav: 2 channels, expected mono" in run.stderr


def test_a_split_that_would_be_empty_is_refused(tmp_path, capsys):
    wav(tmp_path / "audio" / "only.wav", 1000)
    assert sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "d"), "--valid-percent", "0.4"]) == 2
    assert "leaves an empty split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "d"), "--valid-percent", "1"])


@pytest.mark.parametrize("command", ["lexicon", "lm"])
def test_a_directory_as_dest_is_refused_by_name(tmp_path, capsys, command):
    (tmp_path / "a.wrd").write_text("THE CAT\n")
    assert sew([command, str(tmp_path / "a.wrd"), "--dest", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a directory" in capsys.readouterr().err


def test_sew_manifest_follows_folder_links_and_names_links_to_nothing(tmp_path):
    """A LibriSpeech-style train-960 made of links to its subsets: every file behind the links is
    found (Python 3.11's Path.rglob follows none), each real folder once (a link cycle ends), and a
    link whose target is gone is named, not dropped."""
    from sew_plugin.data.errors import DataErrors
    from sew_plugin.data.manifest import write_manifests

    from conftest import write_wav_corpus

    write_wav_corpus(tmp_path / "clean" / "a", [4000, 5000])
    write_wav_corpus(tmp_path / "other" / "b", [6000], seed=1)
    linked = tmp_path / "train-960"
    linked.mkdir()
    (linked / "clean").symlink_to(tmp_path / "clean", target_is_directory=True)
    (linked / "other").symlink_to(tmp_path / "other", target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    (linked / "gone.wav").symlink_to(tmp_path / "nowhere.wav")

    with pytest.raises(DataErrors, match=r"1 bad audio files:\n  .*gone\.wav: a link to nothing"):
        write_manifests(linked, tmp_path / "data", "wav", 0.0, 1, 16000, False, "train", False)
    report = write_manifests(linked, tmp_path / "data", "wav", 0.0, 1, 16000, True, "train", False)
    rows = (tmp_path / "data" / "train.tsv").read_text().splitlines()[1:]
    assert sorted(r.split("\t")[0] for r in rows) == ["clean/a/utt000.wav", "clean/a/utt001.wav", "other/b/utt000.wav"]
    assert report.found == 4 and len(report.skipped) == 1
