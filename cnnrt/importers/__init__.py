"""Importers: other frameworks' models into cnnrt's Model. All layout permutations live here."""
