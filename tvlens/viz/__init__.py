"""Pages built from analysis results (never imported by ``import tvlens``: they pull in plotly).

- :mod:`tvlens.viz.heads`: the head-saliency dashboard (:func:`~tvlens.viz.heads.write_dashboard`).
- :mod:`tvlens.viz.report`: the report, every analysis for one task on one page
  (:func:`~tvlens.viz.report.build_report`, ``tvlens report``).
"""

from tvlens.viz import heads as heads  # noqa: E402  (registers the dashboard view of Circuit.dashboard)
