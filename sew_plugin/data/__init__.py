"""Files in fairseq's formats and their checks: audio, manifests, letter labels, dictionaries and
lexicons, CIF segments, a word n-gram LM, safe checkpoint reading, and the errors that name the
file and line."""
