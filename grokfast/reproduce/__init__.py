"""`grokfast reproduce`: the paper's figures (paper, with paper_figures and paper_report), the
time scale of Eq. 20 (scaling, with scaling_report), Eq. 20 as a predictor of each model's grok
step (prediction, with prediction_report and prediction_text), and what their reports share (report)."""
