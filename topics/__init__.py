"""The topic catalogue (``topics.catalogue``) and its admin (``topics.admin``)."""
