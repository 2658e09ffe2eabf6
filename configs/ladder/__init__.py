"""LADDER configs: one ``get_config(arg)`` file per dataset (see ``common.py``)."""
