"""Reports (installed as ``diag.reports``): stored sweep results -> HTML file and terminal tables."""
