"""BitDistill (arXiv 2510.13998): a full-precision teacher distilled into a ternary student in three stages."""
