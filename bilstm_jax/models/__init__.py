"""The image encoder, the outfit Bi-LSTM with its embeddings, and the losses."""
