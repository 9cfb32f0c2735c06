"""The special ids every vocabulary (SentencePiece model) is trained with, defined once."""

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_IDS = (PAD, UNK, BOS, EOS)
