"""`scorer run`: inputs to outputs, streamed, resumable and summarised, several at once where small."""
