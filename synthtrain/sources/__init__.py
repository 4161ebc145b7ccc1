"""Sources of records: file formats and their readers (local files, the hub) and the download step."""
