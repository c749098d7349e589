"""What a run leaves on disk: history (streamed chunks, run.json, events.jsonl), checkpoint (the
bitwise-resumable state and its format migrations) and result (Result, ResultBatch, their files)."""
