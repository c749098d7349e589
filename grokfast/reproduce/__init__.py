"""`grokfast reproduce`: the paper's figures (paper, with paper_figures and paper_report), the
time scale of Eq. 20 (scaling, with scaling_report), and what their reports share (report)."""
