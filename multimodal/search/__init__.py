"""Search: ProductRetriever, recall metrics, embedding export, FAISS indexes and the query side."""
