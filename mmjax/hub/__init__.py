"""Released models read into mmjax."""
