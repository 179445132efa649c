"""Cell classifiers: genetic-algorithm kNN (GkNN), SVM, plain kNN and the CNN of Thanh et al."""
