"""``sew transcribe`` and its library: recordings in any format, rate and channel count; any length
through overlapping windows; words with times and confidences; txt/json/srt/vtt/ctm; shards."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq.data import Dictionary

from sew_plugin.data.errors import DataError
from sew_plugin.data.recordings import find_recordings, load_recording, make_recording
from sew_plugin.inference.alignment import Word, align_words
from sew_plugin.inference.decoding import ViterbiDecoder
from sew_plugin.inference.formats import FORMATS
from sew_plugin.inference.transcriber import Transcript, Transcriber
from sew_plugin.inference.windows import ALIGN_FRAMES, Windowing, forward_windows, kept_frames, plan
from sew_plugin.modules.masked_group_norm import first_norm, mask_feature_norm, recording_statistics

from helpers import LETTERS, ctc_model, sew_here, sew_script, write_checkpoint



def letters() -> Dictionary:
    d = Dictionary()
    for c in LETTERS:
        d.add_symbol(c)
    return d


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 140 * t * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t)))
            + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def whole(model, wav: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(source=wav[None], padding_mask=torch.zeros(1, wav.numel(), dtype=torch.bool))
        return model.get_normalized_probs(out, log_probs=True).transpose(0, 1)[0]


# ---- windows -------------------------------------------------------------------------------------

def test_windows_cover_the_recording_on_aligned_starts():
    align = 320 * ALIGN_FRAMES
    for samples in (1000, 16000 * 30, 16000 * 30 + 1, 16000 * 61, 16000 * 1800 + 17):
        ranges = plan(samples, Windowing(30, 2.5), align)
        assert ranges[0][0] == 0 and ranges[-1][1] == samples
        assert all(start % align == 0 for start, _ in ranges)
        assert all(b[0] < a[1] for a, b in zip(ranges, ranges[1:]))  # consecutive windows overlap
        assert all(stop - start <= 16000 * 30 for start, stop in ranges)


@pytest.mark.parametrize("window, context", [(4.8, 0.1), (9.6, 0.1), (5.0, 1.0)])
def test_windows_lose_no_frame_when_the_window_is_a_multiple_of_their_step(window, context):
    torch.manual_seed(0)
    model = ctc_model("sew").eval()
    wav = torch.from_numpy(speechlike(21.3))
    stitched = forward_windows(model, wav, Windowing(window, context))
    assert stitched.windows >= 3 and stitched.lprobs.shape == whole(model, wav).shape


def test_windows_without_overlap_are_refused():
    with pytest.raises(ValueError, match="--context 0.0: at least 0.1 s"):
        Windowing(4.8, 0.0)
    with pytest.raises(RuntimeError, match="do not overlap"):
        kept_frames([0, 240], [239, 100])


def test_kept_frames_tile_the_recording_once():
    offsets, counts = [0, 1200, 2400], [1499, 1499, 700]
    spans = kept_frames(offsets, counts)
    assert spans[0][0] == 0 and spans[-1][1] == 3100
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(o <= lo and hi <= o + n for (lo, hi), o, n in zip(spans, offsets, counts))


@pytest.mark.parametrize("kind", ["sew", "sew_d", "wav2vec2"])
@pytest.mark.parametrize("extractor_mode", ["layer_norm", "default"])
def test_windowed_output_matches_the_whole_forward(kind, extractor_mode):
    """On 60 s cut into 20 s windows: the same frames, the same greedy path, log-probabilities close
    (the tiny random models' attention spreads over the whole input, which a window cannot see:
    measured max 4e-4 to 4e-3); one window is the whole forward exactly."""
    torch.manual_seed(0)
    model = ctc_model(kind, extractor_mode).eval()
    mask_feature_norm(model)
    wav = torch.from_numpy(speechlike(60.0))
    reference = whole(model, wav)
    stitched = forward_windows(model, wav, Windowing(20, 2.5, 2))
    assert stitched.windows == 4 and stitched.lprobs.shape == reference.shape
    assert (stitched.lprobs - reference).abs().max() < 1e-2
    assert (stitched.lprobs.argmax(-1) == reference.argmax(-1)).float().mean() > 0.99
    alone = forward_windows(model, wav[: 16000 * 10], Windowing(20, 2.5))
    assert alone.windows == 1 and torch.allclose(alone.lprobs, whole(model, wav[: 16000 * 10]), atol=1e-5)


@pytest.mark.parametrize("kind, downsample", [("sew", {}), ("wav2vec2", {}),
                                              ("sew", dict(input_downsample="avgpool", input_downsample_factor=2)),
                                              ("wav2vec2", dict(input_downsample="resample", input_downsample_factor=3))])
def test_groupnorm_windows_get_the_whole_recordings_statistics(kind, downsample, monkeypatch):
    from sew_plugin.modules.feature_extractor import GroupedConvFeatureExtractor, group_feature_extractors

    torch.manual_seed(0)
    model = ctc_model(kind, "default", sew_ctc=bool(downsample), **downsample).eval()
    mask_feature_norm(model)
    group_feature_extractors(model)  # as load_checkpoint does (wav2vec 2.0's is fairseq's until then)
    # the windows' batch run one utterance at a time, as full-size models run 20 s windows: each group
    # must get its own rows of the recording's statistics
    monkeypatch.setattr(GroupedConvFeatureExtractor, "GROUP_BYTES", 1)
    wav = torch.from_numpy(speechlike(45.0))
    conv, _ = first_norm(model)
    with torch.no_grad():  # of the waveform the front end sees: downsampled first, whole, by such a model
        seen = model.input_downsampler(wav[None], None)[0][0] if downsample else wav
        features = conv(seen[None, None])[0].double()
    mean, var = recording_statistics(model, wav, chunk=16000 * 7)  # chunked: a 7 s piece at a time
    assert torch.allclose(mean.double(), features.mean(-1), atol=1e-5)
    assert torch.allclose(var.double(), features.var(-1, unbiased=False), rtol=1e-4, atol=1e-6)

    import sew_plugin.modules.masked_group_norm as norms  # where forward_windows takes it from

    reference = whole(model, wav)
    with_statistics = (forward_windows(model, wav, Windowing(20, 2.5)).lprobs - reference).abs().max()
    own = norms.recording_statistics
    try:
        norms.recording_statistics = lambda *_: None  # each window normalised by its own frames
        without = (forward_windows(model, wav, Windowing(20, 2.5)).lprobs - reference).abs().max()
    finally:
        norms.recording_statistics = own
    assert with_statistics < without / 3, (with_statistics, without)


# ---- words, times, confidences -----------------------------------------------------------------

def emissions(frames, vocab: Dictionary, sure: float = 0.9) -> torch.Tensor:
    """(T, V) log-probabilities putting ``sure`` on each frame's symbol."""
    probs = torch.full((len(frames), len(vocab)), (1 - sure) / (len(vocab) - 1))
    for t, symbol in enumerate(frames):
        probs[t, vocab.index(symbol)] = sure
    return probs.log()


def test_word_times_come_from_the_frames_of_their_letters():
    """Words separated by known silences: starts and ends within two frames of the truth (here exact)."""
    vocab = letters()
    truth = [("EAT", 10, 22), ("TEA", 40, 55), ("NO", 90, 97)]  # (word, first frame, frame after the last)
    frames = ["<s>"] * 100
    for word, first, end in truth:
        span = np.array_split(np.arange(first, end), len(word))
        for letter, ts in zip(word, span):
            for t in ts:
                frames[t] = letter
        frames[end] = "|"
    lprobs = emissions(frames, vocab)
    words = align_words(ViterbiDecoder(vocab).hypothesis(lprobs)[1], lprobs, vocab, 20.0)
    assert [w.word for w in words] == ["EAT", "TEA", "NO"]
    for w, (_, first, end) in zip(words, truth):
        assert abs(w.start - first * 0.02) <= 2 * 0.02 and abs(w.end - end * 0.02) <= 2 * 0.02
        assert w.confidence == pytest.approx(0.9, abs=1e-5)
    assert ViterbiDecoder(vocab).decode(lprobs) == [w.word for w in words]


def test_a_doubled_letter_needs_a_blank_between_and_confidence_falls_with_doubt():
    vocab = letters()
    lprobs = emissions(["S", "S", "<s>", "S", "E", "|"], vocab)
    lprobs[4] = emissions(["E"], vocab, sure=0.3)[0]
    (word,) = align_words(ViterbiDecoder(vocab).hypothesis(lprobs)[1], lprobs, vocab, 40.0)
    assert word.word == "SSE" and word.start == 0 and word.end == pytest.approx(0.2)
    assert word.confidence == pytest.approx((0.9 * 3 + 0.3) / 4, abs=1e-5)


def test_the_beam_searchs_path_spells_its_words(tmp_path):
    from sew_plugin.data.ngram import write_arpa
    from sew_plugin.inference.decoding import KenLMLexiconDecoder

    vocab = letters()
    (tmp_path / "t.txt").write_text("EAT TEA\nTEA EAT NOT\n")
    write_arpa([tmp_path / "t.txt"], tmp_path / "lm.arpa", 2)
    (tmp_path / "lex.txt").write_text("EAT E A T |\nTEA T E A |\nNOT N O T |\n")
    decoder = KenLMLexiconDecoder(vocab, tmp_path / "lex.txt", tmp_path / "lm.arpa")
    lprobs = emissions("<s> E E A T | <s> T E <s> A A | <s> <s> N O T | <s>".split(), vocab)
    words_, path = decoder.hypothesis(lprobs)
    assert len(path) == len(lprobs)
    words = align_words(path, lprobs, vocab, 20.0)
    assert [w.word for w in words] == words_ == decoder.decode(lprobs) == ["EAT", "TEA", "NOT"]
    assert words[1].start == pytest.approx(0.14) and words[1].end == pytest.approx(0.24)


def test_a_path_ending_inside_a_word_the_beam_search_did_not_emit_gives_no_word():
    vocab = letters()
    lprobs = emissions("E A T | <s> T E".split(), vocab)
    path = [vocab.index(s) for s in "E A T | <s> T E".split()]
    assert [w.word for w in align_words(path, lprobs, vocab, 20.0)] == ["EAT", "TE"]  # greedy: every group
    (word,) = align_words(path, lprobs, vocab, 20.0, words=["EAT"])
    assert word.word == "EAT" and word.end == pytest.approx(0.06)


def test_formats_write_the_words_with_their_times():
    words = [Word("HELLO", 0.5, 0.9, 0.8), Word("THERE", 1.0, 1.4, 0.6), Word("AGAIN", 3.0, 3.5, 0.5)]
    t = Transcript("talk one", words, 4.0, 1, 20.0)
    assert FORMATS["txt"](t) == "HELLO THERE AGAIN\n"
    assert json.loads(FORMATS["json"](t))["words"][1] == {"word": "THERE", "start": 1.0, "end": 1.4, "confidence": 0.6}
    assert FORMATS["srt"](t) == ("1\n00:00:00,500 --> 00:00:01,400\nHELLO THERE\n\n"
                                 "2\n00:00:03,000 --> 00:00:03,500\nAGAIN\n")  # a new cue after a 1.6 s pause
    assert FORMATS["vtt"](t).startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.400\nHELLO THERE\n")
    assert FORMATS["ctm"](t).splitlines()[0] == "talk_one 1 0.500 0.400 HELLO 0.800"


# ---- recordings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, subtype, ext", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"),
                                               ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_recordings_in_any_format_rate_and_channels_become_16k_mono(tmp_path, fmt, subtype, ext):
    rate, seconds = 44100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / f"a.{ext}", np.stack([tone, tone], 1).astype(np.float32), rate, format=fmt, subtype=subtype)
    recording = load_recording(tmp_path / f"a.{ext}")
    assert recording.sample_rate == rate and recording.channels == 2
    assert abs(len(recording.samples) - 32000) <= 0.05 * 32000  # MP3 adds its encoder delay
    segment = recording.samples[4000:20000]
    peak = np.argmax(np.abs(np.fft.rfft(segment))) * 16000 / len(segment)  # Hz
    assert abs(peak - 440) <= 2  # the tone survives resampling


@pytest.mark.parametrize("content, message", [
    (b"RIFF\x00\x00garbage", "cannot be decoded"), ("empty", "holds no audio"),
    ("cut", "truncated: the WAV header declares 57600 bytes of samples, the file holds 28800"),
    ("cut", "truncated: the AIFF header declares"), ("whole", None)])
def test_a_recording_that_gives_no_audio_or_not_all_of_it_is_refused_by_name(tmp_path, content, message):
    path = tmp_path / ("bad.aiff" if message and "AIFF" in message else "bad.wav")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:  # 1.8 s of a tone, its samples cut to half (a copy cut short) where "cut"
        samples = np.sin(np.arange(28800 if content != "empty" else 0) / 10).astype(np.float32) * 0.3
        sf.write(path, samples, 16000, subtype="PCM_16")
        if content == "cut":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) - 28800])
    if message is None:  # a whole file gives every sample
        assert len(load_recording(path).samples) == 28800
        return
    with pytest.raises(DataError, match=f"{path}: {message}"):
        load_recording(path)


def test_folders_are_searched_for_every_audio_format_in_a_fixed_order(tmp_path):
    for name in ("b/2.flac", "a/1.wav", "c/3.mp3", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "again.wav").symlink_to(tmp_path / "a" / "1.wav")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "4.wav").write_bytes(b"")
    (tmp_path / "b" / "._2.flac").write_bytes(b"")
    (tmp_path / "c" / "talk.M4A").write_bytes(b"")
    found, again, hidden, other = find_recordings([tmp_path / "a", tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.wav", "b/2.flac", "c/3.mp3"]
    assert [p.relative_to(tmp_path).as_posix() for p in other] == ["c/talk.M4A", "notes.txt"]  # left out, counted
    assert again == [(tmp_path / "a" / "1.wav", tmp_path / "a" / "1.wav"), (tmp_path / "again.wav", tmp_path / "a" / "1.wav")]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in hidden) == [".hidden", "b/._2.flac"]
    # named as a source, a hidden file or folder is transcribed, not left out
    found, _, hidden, _ = find_recordings([tmp_path, tmp_path / ".hidden", tmp_path / "b" / "._2.flac"])
    assert {".hidden/4.wav", "b/._2.flac"} <= {p.relative_to(tmp_path).as_posix() for p in found} and hidden == []


# ---- the command and the Python API on a checkpoint --------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transcribe")
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    torch.manual_seed(5)
    write_checkpoint(ctc_model("sew"), folder / "ckpt.pt", folder)
    return folder / "ckpt.pt"


def test_a_long_recording_reports_its_progress_after_each_batch_of_windows(checkpoint):
    transcriber = Transcriber.from_checkpoint(checkpoint, windowing=Windowing(5, 1, batch_size=2))
    shares = []
    transcript = transcriber.start(make_recording(speechlike(23.0), 16000), "talk", shares.append)()
    assert transcript.windows == len(shares) * 2 - (transcript.windows % 2)  # one call per batch of two windows
    assert len(shares) >= 3 and shares == sorted(shares) and shares[-1] == 1.0 and 0 < shares[0] < 0.5


def test_the_python_api_refuses_a_device_this_torch_cannot_use(checkpoint):
    from sew_plugin.inference.devices import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="must be cpu, cuda or cuda:N, got 'tpu'"):
        Transcriber.from_checkpoint(checkpoint, device="tpu")
    if not torch.cuda.is_available():  # a CPU-only torch: said, not PyTorch's AssertionError from deep inside
        with pytest.raises(ValueError, match="cuda: this torch .* sees no CUDA device"):
            Transcriber.from_checkpoint(checkpoint, device="cuda")


def test_a_data_folder_the_checkpoint_would_not_read_is_refused_by_name(tmp_path, checkpoint):
    with pytest.raises(DataError, match=f"{tmp_path / 'none'}: not a folder"):
        Transcriber.from_checkpoint(checkpoint, data=tmp_path / "none")
    (tmp_path / "other").mkdir()  # this checkpoint reads its dictionary from the data folder: another size
    (tmp_path / "other" / "dict.ltr.txt").write_text("A 1\nB 1\nC 1\n")
    with pytest.raises(DataError, match=f"{tmp_path / 'other'}: its dictionary gives the CTC head 7 outputs, "
                       f"{checkpoint}'s has 11: pass --data"):
        Transcriber.from_checkpoint(checkpoint, data=tmp_path / "other")
    sf.write(tmp_path / "a.wav", speechlike(1.0), 16000)
    refused = sew_here("transcribe", checkpoint, tmp_path / "a.wav", "--data", tmp_path / "other", expect=2)
    assert "its dictionary gives the CTC head 7 outputs" in refused.stderr
    # a checkpoint that carries its own dictionary (fairseq's task state): a named folder's must be it
    from fairseq.data import Dictionary

    from sew_plugin.inference.settings import load_for_inference

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["task_state"] = {"target_dictionary": Dictionary.load(str(checkpoint.parent / "dict.ltr.txt"))}
    carrying = tmp_path / "carrying.pt"
    torch.save(state, carrying)
    (tmp_path / "reordered").mkdir()  # the same size, another order: the output layer loads, the letters are wrong
    (tmp_path / "reordered" / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in reversed(LETTERS)))
    with pytest.raises(DataError, match=f"{tmp_path / 'reordered' / 'dict.ltr.txt'}: its symbols differ from the "
                       f"dictionary {carrying} decodes with \\(11 vs 11 symbols, the first difference at index 4\\)"):
        Transcriber.from_checkpoint(carrying, data=tmp_path / "reordered")
    # a folder only implied (sew infer's: the manifest's) is not checked: the carried dictionary decodes
    _, task, _ = load_for_inference(carrying, tmp_path / "reordered", data_named=False)
    assert task.target_dictionary.symbols[4:] == LETTERS
    (tmp_path / "same").mkdir()  # the same symbols (other counts) are taken
    (tmp_path / "same" / "dict.ltr.txt").write_text("".join(f"{c} 7\n" for c in LETTERS))
    assert Transcriber.from_checkpoint(checkpoint, data=tmp_path / "same").transcribe(
        speechlike(1.0), sample_rate=16000).seconds == pytest.approx(1.0)


def test_the_python_api_transcribes_arrays_and_files_alike(tmp_path, checkpoint):
    transcriber = Transcriber.from_checkpoint(checkpoint, windowing=Windowing(10, 2))
    wav = speechlike(25.0)
    sf.write(tmp_path / "talk.flac", wav, 16000)
    from_file = transcriber.transcribe(tmp_path / "talk.flac")
    from_array = transcriber.transcribe(wav, sample_rate=16000, name="talk")
    assert from_file.windows == 4 and from_file.seconds == pytest.approx(25.0)
    assert from_file.as_dict()["words"] == from_array.as_dict()["words"]
    assert from_file.source == str(tmp_path / "talk.flac") and from_array.source is None
    with pytest.raises(ValueError, match="needs its sample_rate"):
        transcriber.transcribe(wav)
    pcm = np.round(wav * 32767).astype(np.int16)  # integer PCM is scaled by its type's range
    as_pcm = transcriber.transcribe(pcm, sample_rate=16000)
    assert [w["word"] for w in as_pcm.as_dict()["words"]] == [w["word"] for w in from_array.as_dict()["words"]]
    assert transcriber.transcribe(torch.from_numpy(wav).requires_grad_(), sample_rate=16000).text == from_array.text
    with pytest.raises(DataError, match=r"shape \(2, 400000\): expected \(samples,\) or \(samples, channels\)"):
        transcriber.transcribe(np.stack([wav, wav]), sample_rate=16000)


def test_the_python_api_refuses_settings_it_would_not_read(tmp_path):
    with pytest.raises(ValueError, match="lm is for decoder 'kenlm'; threshold is for exit_policy 'entropy' or "
                       "'similarity' or 'nbest'"):
        Transcriber.from_checkpoint(tmp_path / "none.pt", lm=tmp_path / "lm.arpa", threshold=0.3)
    with pytest.raises(ValueError, match="exit_layer is for exit_policy 'layer'"):
        Transcriber.from_checkpoint(tmp_path / "none.pt", exit_policy="entropy", threshold=0.3, exit_layer=2)
    with pytest.raises(ValueError, match="nbest is for exit_policy 'nbest'"):
        Transcriber.from_checkpoint(tmp_path / "none.pt", exit_policy="layer", exit_layer=2, nbest=10)


def recordings(folder: Path) -> Path:
    for i, seconds in enumerate((3.0, 7.5, 1.2, 12.0, 4.0)):
        sub = folder / ("talks" if i % 2 else "calls")
        sub.mkdir(parents=True, exist_ok=True)
        rate = (16000, 44100, 8000)[i % 3]
        sf.write(sub / f"r{i}.{'flac' if i % 2 else 'wav'}", speechlike(seconds, rate, seed=i), rate)
    return folder


@pytest.mark.slow
def test_sew_transcribe_writes_every_format_refuses_bad_files_and_shards_cover_each_file_once(tmp_path, checkpoint):
    audio = recordings(tmp_path / "audio")
    one = tmp_path / "one"
    run = sew_script("transcribe", checkpoint, audio, "--out", one, "--format", *FORMATS, "--window", "5", "--context", "1")
    assert "transcribed 5 of 5 files" in run.stdout and "resampled to 16 kHz" in run.stdout
    names = sorted(p.relative_to(one).as_posix() for p in one.rglob("*.*"))
    assert names == sorted(f"{d}/r{i}.{fmt}" for i, d in enumerate(["calls", "talks"] * 3) if i < 5 for fmt in FORMATS)
    summary = json.loads((one / "talks" / "r3.json").read_text())
    assert summary["windows"] == 4 and summary["sample_rate"] == 16000 and summary["seconds"] == pytest.approx(12.0)
    assert summary["settings"]["decoder"] == "viterbi" and summary["settings"]["window_seconds"] == 5.0

    sharded = tmp_path / "sharded"
    for k in range(4):
        sew_here("transcribe", checkpoint, audio, "--out", sharded, "--format", *FORMATS, "--window", "5", "--context", "1",
                 "--num-shards", 4, "--shard-id", k)
    assert {p.relative_to(sharded): p.read_bytes() for p in sharded.rglob("*.*")} == \
           {p.relative_to(one): p.read_bytes() for p in one.rglob("*.*")}

    refused = sew_here("transcribe", checkpoint, audio, "--out", one, expect=2)
    assert "already exist" in refused.stderr and "--overwrite" in refused.stderr

    (audio / "calls" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    sf.write(audio / "calls" / "empty.wav", np.zeros(0, np.float32), 16000)
    refused = sew_here("transcribe", checkpoint, audio / "calls", expect=2)
    assert f"{audio / 'calls' / 'broken.wav'}: cannot be decoded" in refused.stderr
    counted = sew_here("transcribe", checkpoint, audio / "calls", "--skip-bad")
    assert "transcribed 3 of 5 files" in counted.stderr and "skipped 2" in counted.stderr
    assert f"{audio / 'calls' / 'empty.wav'}: holds no audio" in counted.stderr
    assert sum(line.startswith(str(audio / "calls")) for line in counted.stdout.splitlines()) == 3


@pytest.mark.slow
def test_sew_transcribe_says_what_an_earlier_run_left_and_prints_files_of_one_name(tmp_path, checkpoint):
    for seed, folder in enumerate(("spk1", "spk2")):
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / "001.wav", speechlike(1.5, seed=seed), 16000)
    printed = sew_here("transcribe", checkpoint, tmp_path / "spk1", tmp_path / "spk2")  # no files: names may repeat
    assert "transcribed 2 of 2 files" in printed.stderr
    assert [line.split(": ")[0] for line in printed.stdout.splitlines()] == [
        str(tmp_path / "spk1" / "001.wav"), str(tmp_path / "spk2" / "001.wav")]
    refused = sew_here("transcribe", checkpoint, tmp_path / "spk1", tmp_path / "spk2", "--out", tmp_path / "o", expect=2)
    assert "would be written to the same files as" in refused.stderr and "different --out folders" in refused.stderr

    out = tmp_path / "out"
    sew_here("transcribe", checkpoint, tmp_path / "spk1", "--out", out, "--format", "json", "srt")
    refused = sew_here("transcribe", checkpoint, tmp_path / "spk1", "--out", out, "--format", "txt", "json", expect=2)
    assert f"{out / '001.json'} already exists" in refused.stderr
    # another format beside an earlier run's (or the user's own files) is written, and what it left is said
    again = sew_here("transcribe", checkpoint, tmp_path / "spk1", "--out", out, "--format", "txt")
    assert f"2 files of these recordings in other formats were there before and are left as they were: " \
           f"{out / '001.json'}, {out / '001.srt'}" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == ["001.json", "001.srt", "001.txt"]  # nothing removed


def test_sew_transcribe_refuses_a_missing_input_and_a_bad_shard_before_loading(tmp_path):
    refused = sew_script("transcribe", tmp_path / "none.pt", tmp_path / "nothing.wav", expect=2)
    assert f"{tmp_path / 'nothing.wav'}: not found" in refused.stderr
    # before the model's libraries are even imported (fairseq's import alone takes 2-4 s)
    probe = subprocess.run([sys.executable, "-c", "import sys; from sew_plugin.cli import main; code = main(sys.argv[1:]); "
                            "print('fairseq' in sys.modules); sys.exit(code)",
                            "transcribe", str(tmp_path / "none.pt"), str(tmp_path / "nothing.wav")],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 2 and probe.stdout == "False\n", probe.stdout + probe.stderr
    assert f"{tmp_path / 'nothing.wav'}: not found" in probe.stderr
    refused = sew_here("transcribe", tmp_path / "none.pt", tmp_path, "--num-shards", 2, "--shard-id", 2, expect=2)
    assert "--shard-id 2 must be below --num-shards 2" in refused.stderr
    refused = sew_here("transcribe", tmp_path / "none.pt", tmp_path, "--format", "srt", expect=2)
    assert "--format needs --out" in refused.stderr
    # two files that would write the same transcripts, in different shards: refused in every shard
    for folder in ("a/deep", "b"):
        (tmp_path / folder).mkdir(parents=True)
        sf.write(tmp_path / folder / "rec.wav", speechlike(1.0), 16000)
    for shard in ("0", "1"):
        refused = sew_here("transcribe", tmp_path / "none.pt", tmp_path / "a" / "deep" / "rec.wav",
                           tmp_path / "b" / "rec.wav", "--out", tmp_path / "out", "--num-shards", 2, "--shard-id", shard,
                           expect=2)
        assert "would be written to the same files as" in refused.stderr


@pytest.mark.slow
def test_sew_transcribe_refuses_options_the_model_cannot_run_once_and_notes_duplicates(tmp_path, checkpoint):
    sf.write(tmp_path / "a.wav", speechlike(3.0), 16000)
    (tmp_path / "link.wav").symlink_to(tmp_path / "a.wav")
    refused = sew_script("transcribe", checkpoint, tmp_path / "a.wav", "--window", "1", "--context", "0.3", "--skip-bad",
                  expect=2)
    assert refused.stderr.count("--window 1.0 with --context 0.3 leaves no step") == 1
    done = sew_here("transcribe", checkpoint, tmp_path / "a.wav", tmp_path / "link.wav")
    assert f"{tmp_path / 'link.wav'} left out: the same file as {tmp_path / 'a.wav'}" in done.stderr
    assert "transcribed 1 of 1 files" in done.stderr
    # options this run would not read are refused by name, before the model loads
    for options, reason in ((["--lm", tmp_path / "lm.arpa"], "--lm is for --decoder kenlm"),
                            (["--lm-weight", 1], "--lm-weight is for --decoder kenlm"),
                            (["--threshold", 0.3], "--threshold is for --exit-policy entropy, similarity or nbest"),
                            (["--exit-layer", 2], "--exit-layer is for --exit-policy layer"),
                            (["--exit-policy", "entropy", "--threshold", 1, "--exit-layer", 2, "--nbest", 5],
                             "--exit-layer is for --exit-policy layer; --nbest is for --exit-policy nbest")):
        refused = sew_here("transcribe", tmp_path / "none.pt", tmp_path / "a.wav", *options, expect=2)
        assert reason in refused.stderr and "would ignore" in refused.stderr, refused.stderr
    # a folder's hidden recordings and folders are left out, as fairseq's glob, and counted
    (tmp_path / ".Trash").mkdir()
    sf.write(tmp_path / ".Trash" / "b.wav", speechlike(1.0), 16000)
    (tmp_path / "._a.wav").write_bytes(b"AppleDouble")
    (tmp_path / "notes.txt").write_text("not audio")
    done = sew_here("transcribe", checkpoint, tmp_path)
    assert "transcribed 1 of 1 files" in done.stderr
    assert "1 other files left out for their extension (.txt; recordings are .wav, .flac" in done.stderr
    assert f"2 hidden files or folders left out, as fairseq's glob: {tmp_path / '.Trash'}, {tmp_path / '._a.wav'}" \
        in done.stderr


# ---- decoding in several processes --------------------------------------------------------------

def test_parallel_beam_search_gives_the_serial_results(tmp_path):
    from sew_plugin.data.ngram import write_arpa
    from sew_plugin.inference.decoding import BeamOptions, KenLMLexiconDecoder, ParallelDecoder

    vocab = letters()
    rng = np.random.default_rng(0)
    words = sorted({"".join(rng.choice(list("ETAONS"), rng.integers(2, 6))) for _ in range(300)})
    (tmp_path / "t.txt").write_text("".join(" ".join(rng.choice(words, 8)) + "\n" for _ in range(200)))
    write_arpa([tmp_path / "t.txt"], tmp_path / "lm.arpa", 2)
    (tmp_path / "lex.txt").write_text("".join(f"{w} {' '.join(w)} |\n" for w in words))
    options = BeamOptions(beam=20)
    serial = KenLMLexiconDecoder(vocab, tmp_path / "lex.txt", tmp_path / "lm.arpa", options)
    torch.manual_seed(0)
    batch = [torch.randn(int(n), len(vocab)).mul(3).log_softmax(-1) for n in rng.integers(50, 300, 6)]
    with ParallelDecoder(2, "kenlm", vocab, tmp_path / "lex.txt", tmp_path / "lm.arpa", options) as parallel:
        assert parallel.hypotheses(batch) == serial.hypotheses(batch)
        assert any(words for words, _ in serial.hypotheses(batch))  # not all empty: the comparison says something


@pytest.mark.slow
def test_sew_transcribe_with_decode_workers_writes_what_one_process_writes(tmp_path, checkpoint):
    from sew_plugin.data.ngram import write_arpa

    audio = recordings(tmp_path / "audio")
    (tmp_path / "t.txt").write_text("EAT TEA\nTEA EAT NOT\nNO SEA TO EAT\n")
    write_arpa([tmp_path / "t.txt"], tmp_path / "lm.arpa", 2)
    (tmp_path / "lex.txt").write_text("".join(f"{w} {' '.join(w)} |\n" for w in ("EAT", "TEA", "NOT", "NO", "SEA", "TO")))
    kenlm = ["--decoder", "kenlm", "--lm", tmp_path / "lm.arpa", "--lexicon", tmp_path / "lex.txt", "--window", "5",
             "--context", "1", "--format", "json", "ctm"]
    for workers, command in ((1, sew_here), (2, sew_script)):
        command("transcribe", checkpoint, audio, "--out", tmp_path / f"w{workers}", "--decode-workers", workers, *kenlm)
    ones = {p.relative_to(tmp_path / "w1"): p.read_bytes() for p in (tmp_path / "w1").rglob("*.*")}
    assert len(ones) == 10 and ones == {p.relative_to(tmp_path / "w2"): p.read_bytes()
                                        for p in (tmp_path / "w2").rglob("*.*")}
    for workers in (1, 2):
        settings = json.loads((tmp_path / f"w{workers}" / "talks" / "r1.json").read_text(),
                              parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["settings"]
        assert settings["unk_score"] == "-inf" and settings["decoder"] == "kenlm"
    refused = sew_here("transcribe", checkpoint, audio, "--decode-workers", 2, expect=2)
    assert "--decode-workers is for --decoder kenlm" in refused.stderr

    (audio / "zz").mkdir()  # a bad file last: what was decoded before it, in the workers, is written
    (audio / "zz" / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    refused = sew_script("transcribe", checkpoint, audio, "--out", tmp_path / "w3", "--decode-workers", 2, *kenlm, expect=2)
    assert "bad.wav: cannot be decoded" in refused.stderr
    assert len(list((tmp_path / "w3").rglob("*.json"))) == 5


# ---- real speech: Debian's pocketsphinx-testdata LibriVox recordings (make testdata) ------------

LIBRIVOX = Path(__file__).parent / "data" / "librivox"


@pytest.fixture(scope="module")
def librivox():
    if not (LIBRIVOX / "transcription").is_file():  # make test fetches it first; a bare pytest run here
        subprocess.run(["make", "testdata"], cwd=Path(__file__).parents[1], check=True, capture_output=True)
    return sorted(LIBRIVOX.glob("*.wav"))


def test_real_speech_as_44k_stereo_flac_or_mp3_gives_what_its_16k_wav_gives(tmp_path, librivox):
    """The same LibriVox speech as 16 kHz mono WAV, 44.1 kHz stereo FLAC and 44.1 kHz stereo MP3:
    the same frames; FLAC (lossless, resampled twice) the same path and log-probabilities to
    ~1e-3; MP3 (lossy) close, and far closer than another recording is."""
    import soxr

    assert len(librivox) == 5
    torch.manual_seed(0)
    model = ctc_model("sew", "default").eval()
    mask_feature_norm(model)

    def lprobs(path):
        return forward_windows(model, torch.from_numpy(load_recording(path).samples)).lprobs

    references, mp3_gap = [], 0.0
    for wav in librivox:
        samples, rate = sf.read(wav, dtype="float32")
        assert rate == 16000 and samples.ndim == 1
        stereo = np.repeat(soxr.resample(samples, 16000, 44100)[:, None], 2, axis=1)
        sf.write(tmp_path / f"{wav.stem}.flac", stereo, 44100)
        sf.write(tmp_path / f"{wav.stem}.mp3", stereo, 44100, format="MP3")
        reference = lprobs(wav)
        references.append(reference)
        flac, mp3 = lprobs(tmp_path / f"{wav.stem}.flac"), lprobs(tmp_path / f"{wav.stem}.mp3")
        assert flac.shape == mp3.shape == reference.shape
        assert torch.equal(flac.argmax(-1), reference.argmax(-1)) and (flac - reference).abs().mean() < 2e-3
        assert (mp3.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
        mp3_gap = max(mp3_gap, float((mp3 - reference).abs().mean()))
    assert mp3_gap < 0.1
    n = min(len(r) for r in references)
    other = float((references[0][:n] - references[1][:n]).abs().mean())
    assert other > 3 * mp3_gap, (other, mp3_gap)  # another recording is much farther than a file's MP3
