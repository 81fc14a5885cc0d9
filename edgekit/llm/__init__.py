"""Small language models: a GGUF file to a signed package that streams generation on a device (docs/llm.md)."""
