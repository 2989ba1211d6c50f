"""The reporter: records -> tables, figures and the static dashboard site (``arena report``).

Reads the store only; never imports torch, tasks or architectures. Nothing is imported here so
that ``arena.report.grids`` (stdlib only) stays cheap for the tasks that use it; import
``arena.report.site.build_site`` (pandas, matplotlib, seaborn) when you want the site.
"""
