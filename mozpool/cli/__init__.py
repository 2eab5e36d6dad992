"""Console scripts: mozpool-db, relay, pxe-config, mozpool-inventorysync, mozpool-client."""
