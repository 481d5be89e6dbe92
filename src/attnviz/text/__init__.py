"""Text in, token ids out: GPT-2's offline BPE, every model's own tokenizer behind one
interface, and reading the text from an argument, a file or stdin."""
