"""What a run leaves on disk: history (streamed chunks, run.json, events.jsonl), checkpoint (the
bitwise-resumable state and its format migrations), result (Result, ResultBatch, their files),
ownership (one writer, own names, no links), integrity (checksums) and recovery (the newest
verified checkpoint, or starting over)."""
