"""How a corpus's documents become the model's input sequences (`packing`).

- "lines": every non-empty line of every document is one sequence (a .txt corpus's behaviour
  since the seed), truncated at max_sequence_length;
- "documents": every document is one sequence, truncated at max_sequence_length;
- "concat": documents are tokenized, joined with the tokenizer's EOS, and cut into windows of
  exactly max_sequence_length tokens, a BOS at the start of each where the model expects one
  (SAELens' default); the last, shorter window is dropped, so nothing is padded.
"""
PACKINGS = ("lines", "documents", "concat")
