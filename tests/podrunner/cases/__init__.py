"""sidemount's end-to-end cases on the pod runner: `python -m podrunner.cases`."""
