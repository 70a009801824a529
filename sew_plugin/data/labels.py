"""Transcripts to fairseq's letter targets (``.wrd``, ``.ltr``, ``dict.ltr.txt``) and lexicons.

Formats (as fairseq's ``examples/wav2vec/libri_labels.py`` writes them):
``.wrd`` one transcript per manifest line; ``.ltr`` its letters separated by spaces with ``|`` after
every word (``HI THERE`` -> ``H I | T H E R E |``); ``dict.ltr.txt`` ``symbol count`` lines, most
frequent first; a flashlight lexicon line is ``WORD W O R D |``.
"""

import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .audio import SAMPLE_RATE
from .errors import DataError, output_dir, output_file, read_lines, refuse_bad, refuse_existing
from .manifest import LABEL_OUTPUTS, Manifest, check_audio, files_below, format_manifest, read_manifest

WORD_BOUNDARY = "|"


def to_letters(words: str) -> str:
    """``"HI THERE"`` -> ``"H I | T H E R E |"``."""
    return " ".join(" ".join(word) + " " + WORD_BOUNDARY for word in words.split())


def normalise(text: str, upper: bool) -> str:
    text = " ".join(text.split())
    return text.upper() if upper else text


@dataclass
class Transcript:
    text: str
    path: Path
    line: int


def transcript_files(sources: Sequence[Path]) -> List[Path]:
    """Files as given; a directory stands for every ``*.trans.txt`` below it (LibriSpeech layout)."""
    files = []
    for src in map(Path, sources):
        if src.is_dir():
            found = files_below(src, ".trans.txt")[0]
            if not found:
                raise DataError(src, "no *.trans.txt transcript files in this directory")
            files.extend(found)
        elif src.is_file():
            files.append(src)
        else:
            raise DataError(src, "transcript file not found")
    return files


AUDIO_SUFFIXES = (".wav", ".flac")


def utterance_id(name: str, audio_suffixes: Sequence[str] = AUDIO_SUFFIXES) -> str:
    """The ID an audio file or transcript line names: the file name without its audio extension
    (only that: ``spk.utt.1`` stays whole), in Unicode's composed form (NFC), so a name written
    decomposed (macOS file names are NFD) matches its transcript."""
    name = PurePosixPath(name.strip()).name
    stem, suffix = os.path.splitext(name)
    if suffix.lower() in audio_suffixes:
        name = stem
    return unicodedata.normalize("NFC", name)


def read_transcripts(sources: Sequence[Path], upper: bool = False,
                     audio_suffixes: Sequence[str] = AUDIO_SUFFIXES) -> Dict[str, Transcript]:
    """Utterance ID -> transcript, from ``ID TEXT`` lines, or ``ID<TAB>TEXT`` lines in ``.tsv`` files.

    The ID is the audio file's name, or the path's, without its audio extension (``utterance_id``).
    """
    out: Dict[str, Transcript] = {}
    for path in transcript_files(sources):
        tsv = path.suffix == ".tsv"
        for number, line in enumerate(read_lines(path, "transcript file"), start=1):
            if not line.strip():
                continue
            cols = line.split("\t", 1) if tsv else line.strip().split(None, 1)
            if len(cols) != 2 or not cols[1].strip():
                raise DataError(path, "expected an utterance ID followed by its transcript", number)
            utt_id, text = utterance_id(cols[0], audio_suffixes), normalise(cols[1], upper)
            if WORD_BOUNDARY in text:
                raise DataError(path, f"transcript contains {WORD_BOUNDARY!r}, the word-boundary symbol", number)
            if utt_id in out:
                prev = out[utt_id]
                raise DataError(path, f"utterance {utt_id} is already transcribed at {prev.path}:{prev.line}", number)
            out[utt_id] = Transcript(text, path, number)
    return out


def read_dictionary(path: Path) -> List[str]:
    """Symbols of a fairseq dictionary file (``symbol count`` lines)."""
    symbols, seen = [], {}
    for number, line in enumerate(read_lines(path, "dictionary", fairseq_reads=True), start=1):
        cols = line.split()
        if len(cols) != 2 or not cols[1].lstrip("-").isdigit():
            raise DataError(path, "expected 'symbol count'", number)
        if cols[0] in seen:  # fairseq's Dictionary.load refuses it too, deep inside training
            raise DataError(path, f"symbol {cols[0]!r} is already on line {seen[cols[0]]}", number)
        seen[cols[0]] = number
        symbols.append(cols[0])
    return symbols


def format_dictionary(letter_lines: Iterable[str]) -> str:
    counts = Counter(sym for line in letter_lines for sym in line.split())
    return "".join(f"{sym} {n}\n" for sym, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def unknown_letters(text: str, symbols: Set[str]) -> List[str]:
    return sorted({sym for sym in to_letters(text).split() if sym not in symbols})


def dictionary_split(dict_path: Path) -> str:
    """The split ``write_labels`` built a dictionary from: the ``<split>.ltr`` beside it whose letter
    counts it holds exactly (both are written from the same letters); "" when none matches."""
    counts = dict_path.read_text(encoding="utf-8")
    for ltr in sorted(dict_path.parent.glob("*.ltr")):
        try:
            if format_dictionary(read_lines(ltr, "label file")) == counts:
                return ltr.stem
        except DataError:  # not ours; the error being reported is about the dictionary
            continue
    return ""


@dataclass
class LabelReport:
    split: str
    utterances: int
    labelled: int = 0
    transcripts_read: int = 0
    other_split_transcripts: int = 0
    dictionary: str = ""
    warning: str = ""
    note: str = ""
    skipped: List[DataError] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.split}: {self.utterances} utterances in, {self.labelled} labelled out, "
            f"{len(self.skipped)} skipped; {self.transcripts_read} transcripts read, "
            f"{self.other_split_transcripts} belong to audio outside this manifest; {self.dictionary}"
            + (f"; {self.note}" if self.note else "")
        )


def _utterance_ids(manifest: Manifest, audio_suffixes: Sequence[str]) -> List[str]:
    ids, seen = [], {}
    for index, (rel, _) in enumerate(manifest.entries):
        utt_id = utterance_id(rel, audio_suffixes)
        if utt_id in seen:
            raise DataError(manifest.path, f"utterance ID {utt_id} also names line {seen[utt_id]}", index + 2)
        seen[utt_id] = index + 2
        ids.append(utt_id)
    return ids


def write_labels(
    manifest_path: Path,
    transcripts: Sequence[Path],
    dest: Path,
    dictionary: Optional[Path] = None,
    upper: bool = False,
    skip_bad: bool = False,
    sample_rate: int = SAMPLE_RATE,
    overwrite: bool = False,
) -> LabelReport:
    """Write ``<split>.wrd`` and ``<split>.ltr`` aligned with the manifest, and the dictionary.

    fairseq reads ``DATA/<split>.tsv`` with ``DATA/<split>.ltr``, so ``dest`` gets the manifest too
    when it lies elsewhere; a ``dest/<split>.tsv`` with other rows, or label files of an earlier run,
    are refused before any work unless ``overwrite``.

    The dictionary is checked against, not rewritten, when given or when ``dest/dict.ltr.txt``
    exists (the usual case for a valid or test split); otherwise it is built from this split, with a
    warning unless the split is ``train`` (fine-tuning needs every letter of train in it). A letter
    outside ``dest/dict.ltr.txt`` is reported with the split the dictionary was built from.
    Problems (an utterance whose audio file is missing, unreadable, not mono at ``sample_rate``,
    shorter than 400 samples or of another length than its row says (headers only), an utterance
    with no transcript, a transcript whose audio does not exist under the manifest's root, letters
    outside the dictionary) are collected and raised together, unless
    ``skip_bad``: then the bad utterances are left out of a rewritten ``dest/<split>.tsv`` (the
    original is kept as ``<split>.unfiltered.tsv``) and listed in ``dest/<split>.skipped.tsv``.
    """
    manifest_path, dest = Path(manifest_path), output_dir(dest)
    split = manifest_path.stem
    beside, unfiltered = dest / f"{split}.tsv", dest / f"{split}.unfiltered.tsv"
    in_place = beside.exists() and beside.samefile(manifest_path)
    source = unfiltered if in_place and unfiltered.is_file() else manifest_path  # all rows, before a --skip-bad
    manifest = read_manifest(source)
    if not manifest.entries:
        raise DataError(source, "manifest has no utterances")
    other = not in_place and beside.is_file() and beside.read_bytes() != manifest_path.read_bytes()
    why = (f" ({beside} is another manifest than {manifest_path}, and fairseq reads these labels with it)" if other
           else " (the labels of an earlier run)")
    replaced = refuse_existing(([beside] if other else []) + ([unfiltered] if source == manifest_path else [])
                               + [dest / f"{split}{s}" for s in LABEL_OUTPUTS], overwrite, why)
    suffixes = sorted({Path(rel).suffix.lower() for rel, _ in manifest.entries} | set(AUDIO_SUFFIXES))
    ids = _utterance_ids(manifest, suffixes)
    texts = read_transcripts(transcripts, upper, suffixes)
    report = LabelReport(split, len(ids), transcripts_read=len(texts))
    if source != manifest_path:
        report.note = f"labelled the rows of {source}, the manifest before an earlier --skip-bad"

    dict_path = Path(dictionary) if dictionary else dest / "dict.ltr.txt"
    rebuild = overwrite and not dictionary and dict_path.is_file() and dictionary_split(dict_path) == split
    symbols = set(read_dictionary(dict_path)) if (dictionary or dict_path.is_file()) and not rebuild else None
    report.dictionary = (f"checked against {dict_path}" if symbols is not None else
                         f"{'rebuilt' if rebuild else 'built'} {dict_path} from {split}")
    if symbols is None and split != "train":
        report.warning = (f"{dict_path} is built from {split}, but fine-tuning needs it built from the training "
                          f"split (letters only train has are refused otherwise): delete it and label train first")

    errors: Dict[int, DataError] = check_audio(manifest, sample_rate)
    origin: Optional[str] = None  # the split dest/dict.ltr.txt was built from, looked up at its first missing letter
    for index, utt_id in enumerate(ids):
        if index in errors:
            continue
        if utt_id not in texts:
            errors[index] = DataError(manifest_path, f"no transcript for utterance {utt_id}", index + 2)
        elif symbols is not None:
            t = texts[utt_id]
            bad = unknown_letters(t.text, symbols)
            if bad:
                if origin is None:
                    origin = "" if dictionary else dictionary_split(dict_path)
                built = "" if dictionary else f" (built from {origin or 'another split?'})"
                errors[index] = DataError(t.path, f"characters {bad} of {utt_id} are not in {dict_path}{built}", t.line)

    in_manifest = set(ids)
    audio_ids = {utterance_id(p.name, suffixes) for s in suffixes for p in files_below(manifest.root, s)[0]}
    orphans = [
        DataError(t.path, f"transcript of {utt_id} has no audio file under {manifest.root}", t.line)
        for utt_id, t in texts.items()
        if utt_id not in audio_ids
    ]
    report.other_split_transcripts = sum(1 for u in texts if u in audio_ids and u not in in_manifest)

    problems = [errors[i] for i in sorted(errors)] + orphans
    keep = [i for i in range(len(ids)) if i not in errors]
    hint = ""
    if origin and origin != "train":
        hint = f"{dict_path} was built from {origin}: delete it and label train first, or fix them"
    elif origin == split:
        hint = f"{dict_path} was built from an earlier {split}: pass --overwrite to rebuild it, or fix them"
    refuse_bad("utterances or transcripts", problems, skip_bad, bool(keep), hint)
    report.skipped = problems

    words = [texts[ids[i]].text for i in keep]
    letters = [to_letters(w) for w in words]
    outputs = {dest / f"{split}.wrd": "".join(w + "\n" for w in words),
               dest / f"{split}.ltr": "".join(l + "\n" for l in letters)}
    if errors and source == manifest_path:
        outputs[unfiltered] = format_manifest(manifest)  # the original, which a rerun labels again
    if errors or not in_place or source != manifest_path:
        outputs[beside] = format_manifest(Manifest(manifest.root, [manifest.entries[i] for i in keep]))
    if problems:
        outputs[dest / f"{split}.skipped.tsv"] = "".join(f"{e.where}\t{e.message}\n" for e in problems)
    if symbols is None:
        outputs[dict_path] = format_dictionary(letters)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
    stale = set(replaced) - set(outputs)  # an earlier run's skip lists, stale now
    if source != manifest_path and not errors:
        stale.add(unfiltered)  # every row is back in <split>.tsv
    for path in stale:
        path.unlink()
    report.labelled = len(keep)
    assert report.labelled + len(errors) == report.utterances
    return report


def write_lexicon(word_sources: Sequence[Path], dest: Path, dictionary: Optional[Path] = None,
                  overwrite: bool = False) -> Tuple[int, Path]:
    """Write a flashlight lexicon (``WORD W O R D |``) for every distinct word of the given files.

    Word lists and ``.wrd`` files both work: every whitespace-separated token is a word. With a
    dictionary, a word spelled with a letter outside it raises ``DataError`` at its first line.
    An existing ``dest`` is refused unless ``overwrite``.
    """
    dest = output_file(dest, overwrite)
    symbols = set(read_dictionary(dictionary)) if dictionary else None
    first_seen: Dict[str, Tuple[Path, int]] = {}
    for path in map(Path, word_sources):
        if not path.is_file():
            raise DataError(path, "word list not found")
        for number, line in enumerate(read_lines(path, "word list"), start=1):
            for word in line.split():
                if WORD_BOUNDARY in word:
                    raise DataError(path, f"word {word!r} contains the word-boundary symbol", number)
                first_seen.setdefault(word, (path, number))
    if not first_seen:
        raise DataError(", ".join(map(str, word_sources)), "no words found")
    if symbols is not None:
        for word, (path, number) in first_seen.items():
            bad = unknown_letters(word, symbols)
            if bad:
                raise DataError(path, f"word {word!r} has characters {bad} not in {dictionary}", number)
    dest.write_text("".join(f"{w} {to_letters(w)}\n" for w in sorted(first_seen)), encoding="utf-8")
    return len(first_seen), dest
