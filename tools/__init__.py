# A regular package, so that `import tools.count_params` finds this folder first even where Detectron2
# main is installed: its wheel installs a top-level `tools` package (its own tools/), which would
# otherwise take precedence over this folder as a namespace package, wherever it sits on sys.path.
