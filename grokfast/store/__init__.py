"""What a run leaves on disk: history (streamed chunks, run.json, events.jsonl), checkpoint (the
bitwise-resumable state and its format migrations), result (Result, ResultBatch, their files),
ownership (one writer, own names, no links, the one validator of names read back), output (the one
rule for every other command's output directory: command_output), integrity (checksums) and
recovery (the newest verified checkpoint, or starting over)."""
