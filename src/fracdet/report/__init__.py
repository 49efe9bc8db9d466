"""Reports for people: the clinical evaluation (metrics with bootstrap CIs, subgroups,
calibration, operating points, figures) and its self-contained HTML page.

- :func:`clinical_evaluation` computes everything and writes the figures;
- :func:`render_html` / :func:`write_html_report` turn it into one HTML file with the
  figures embedded (base64 PNG), readable in any browser without fracdet.
"""

from fracdet.report.clinical import FIGURES, clinical_evaluation, subgroups_of
from fracdet.report.html import render_html, write_html_report

__all__ = ["FIGURES", "clinical_evaluation", "render_html", "subgroups_of", "write_html_report"]
