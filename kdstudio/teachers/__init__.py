"""Teachers: OpenAI-compatible endpoints (`openai_api`, capability `probe`, Batch API in
`batch`) and local Hugging Face models (`local`)."""
