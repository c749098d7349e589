"""`grokfast reproduce`: the paper's figures (paper, with paper_figures and paper_report), the
time scale of Eq. 20 (scaling, with scaling_report), Eq. 20 as a predictor of each model's grok
step (prediction, with prediction_report and prediction_text), and what their reports share (report).

Every `reproduce` command writes its --out through `stages.reproducing` (the one rule of every
command's output, grokfast.store.output.command_output, plus resumable stages): a new one (e.g.
`reproduce hierarchy`) enters ``with reproducing(out, "reproduce NAME", options) as o:`` and runs
its work as `stages.stage` / `stages.sweep_stage`, writing only through ``o``."""
