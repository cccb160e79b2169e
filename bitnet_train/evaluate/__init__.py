"""Evaluation of trained and exported models: perplexity on any text and lm-evaluation-harness tasks.

`python -m bitnet_train.evaluate SOURCE ...` (see __main__.py). sources.py loads every kind of model the
project produces as it was trained or exported, perplexity.py scores text, lm.py is the lm-eval model class
(registered as `bitnet_train`), tasks.py resolves task names, including the offline tasks under tasks/.
"""
