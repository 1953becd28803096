// CNI
