"""Data preparation in fairseq's formats: manifests, letter labels, dictionaries and lexicons."""
