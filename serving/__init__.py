"""The request-time service (`streamrec serve`): a materialised view of the recommendations
topic and the model, served over HTTP with its metrics and a dashboard."""
