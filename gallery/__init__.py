"""`make gallery`: one command runs each known result of the field that Dynascope reproduces, draws its picture
with the dashboard's own figure descriptions and records the number it measured (docs/gallery/)."""
