"""xaiscope.dashboard: the Panel app, one ``pn.viewable.Viewer`` per view over a shared state object."""
