"""medkd.report: every table and figure medkd writes.

``study`` renders an experiment (``medkd report``) with the ``layouts`` of each study, ``qualitative`` draws its
panel from saved predictions, ``compare`` builds the demo's comparison of a few runs; ``scores`` gives per-case
scores as the evaluation computes them, ``context`` the lookups and number formats, ``figures`` / ``document`` the
PNG figures and the Markdown + HTML document.
"""
