"""Pages built from analysis results (never imported by ``import tvlens``: they pull in plotly).

- :mod:`tvlens.viz.heads`: the head-saliency dashboard (:func:`~tvlens.viz.heads.write_dashboard`).
"""
